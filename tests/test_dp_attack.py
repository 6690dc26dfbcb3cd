"""An empirical audit of the DP prompt's randomness: a learner that knows everything the ledger
records (the request, its seed, the backbone, both candidate data sets) tries to tell which of
two neighbouring data sets a site holds.

Against the site's mechanism (noise from its secret over the request) its success rate must stay
within what (epsilon, delta)-DP allows, ``(e^eps + delta) / (1 + e^eps)``: the 95 % Clopper-Pearson
lower bound of its rate over 200 trials is at or below that limit. Against a control mechanism
whose noise is seeded from the request (what the site did before), the same attack replays the
mechanism exactly and exceeds it.
"""

import math

import numpy as np
import pytest

EPSILON = 0.5
DELTA = 1e-3
TRIALS = 200
STEPS = 4
BATCH = 4


def dp_limit(epsilon: float, delta: float) -> float:
    """The highest success rate any test of two neighbouring data sets can have under DP."""
    return (math.exp(epsilon) + delta) / (1 + math.exp(epsilon))


def clopper_pearson_lower(wins: int, n: int, level: float = 0.95) -> float:
    from scipy.stats import beta

    return 0.0 if wins == 0 else float(beta.ppf((1 - level) / 2, wins, n - wins + 1))


@pytest.fixture(scope="module")
def mechanism(smd_backbone, tmp_path_factory):
    from simulator.payloads import SiteSpec
    from simulator.seeding import torch_generator
    from simulator.smd.cache import load_backbone
    from sites.datasets import build_site_data
    from sites.dp_prompt import dp_tune_prompt
    from sites.site_state import SiteState

    model = load_backbone(smd_backbone)
    spec = SiteSpec("phantom", "alpha", 0, 7, 32, 12, 6, "auto", 0.25, "")
    d = build_site_data(spec)
    cases = d.case_ids()
    keep = cases != 0  # the neighbour: the same data set without its first case
    datasets = [
        (d.train_x, d.train_y, cases),
        (d.train_x[keep], d.train_y[keep], np.unique(cases[keep], return_inverse=True)[1]),
    ]
    state = SiteState(str(tmp_path_factory.mktemp("site")), "attack")

    def run(which: int, seed: int, keyed: bool) -> np.ndarray:
        """The prompt tuned on data set ``which`` for a request with ``seed``: noise from the
        site's secret over the request (``keyed``) or from the request's seed (the control)."""
        gen = (
            state.keyed_generator("dp-prompt", f"request-with-seed-{seed}")
            if keyed
            else torch_generator(seed)
        )
        x, y, c = datasets[which]
        prompt, _ = dp_tune_prompt(model, x, y, c, STEPS, 0.05, BATCH, gen, EPSILON, DELTA, 0.03)
        return prompt

    return run


def _attack(mechanism) -> tuple[int, int]:
    """Trials won against the site's mechanism and against the control: the site holds data set
    ``b``; the learner replays the mechanism on both candidates with the request's seed and
    guesses the nearer (against the control, the replay of ``b`` is what the site sent)."""
    rng = np.random.default_rng(2026)
    keyed = control = 0
    for t in range(TRIALS):
        b = int(rng.integers(2))
        replays = [mechanism(w, t, False) for w in (0, 1)]
        for seen, is_keyed in ((mechanism(b, t, True), True), (replays[b], False)):
            guess = int(np.argmin([np.linalg.norm(seen - r) for r in replays]))
            if is_keyed:
                keyed += guess == b
            else:
                control += guess == b
    return keyed, control


@pytest.mark.slow
def test_a_learner_that_knows_the_ledger_cannot_tell_neighbouring_data_sets_apart(mechanism):
    limit = dp_limit(EPSILON, DELTA)
    keyed, control = _attack(mechanism)
    print(
        f"\nDP attack at epsilon {EPSILON}, delta {DELTA}, {TRIALS} trials: limit {limit:.3f}; "
        f"site's mechanism {keyed}/{TRIALS} (95% CP lower "
        f"{clopper_pearson_lower(keyed, TRIALS):.3f}); control seeded from the request "
        f"{control}/{TRIALS} (lower {clopper_pearson_lower(control, TRIALS):.3f})"
    )
    assert clopper_pearson_lower(keyed, TRIALS) <= limit
    assert clopper_pearson_lower(control, TRIALS) > limit
