"""PGA: the first-order meta-gradient against the explicit alignment objective."""

import numpy as np
import pytest
import torch

from server.methods.meta_gradient import alignment_gradient, first_order_meta_gradient, split
from simulator.segmentation import build_model


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model(1, 4, 1, seed=seed).double()
    gen = torch.Generator().manual_seed(seed)

    def dom():
        x = torch.rand((3, 1, 8, 8), generator=gen, dtype=torch.float64)
        return x, (x > 0.5).double()

    current, r1, r2 = dom(), dom(), dom()
    groups = ([current, r2], [r1])
    return model, current, [r1, r2], groups


def _diff(alpha, use_mem=True, use_gen=True):
    model, current, replay, groups = _setup()
    fo, _ = first_order_meta_gradient(model, current, replay, groups, alpha, 1.0, use_mem, use_gen)
    ex, _ = alignment_gradient(model, current, replay, groups, alpha, 1.0, use_mem, use_gen)
    return float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(fo, ex, strict=True))))


@pytest.mark.parametrize("use_mem, use_gen", [(True, True), (True, False), (False, True)])
def test_first_order_matches_explicit_objective_to_second_order(use_mem, use_gen):
    alphas = np.array([0.04, 0.02, 0.01, 0.005, 0.0025])
    diffs = np.array([_diff(a, use_mem, use_gen) for a in alphas])
    assert (diffs > 0).all() and (np.diff(diffs) < 0).all()
    slope = np.polyfit(np.log(alphas), np.log(diffs), 1)[0]
    assert 1.8 < slope < 2.2, f"log-log slope {slope:.2f}, diffs {diffs}"


def test_meta_objectives_depend_on_the_inner_step():
    model, current, replay, groups = _setup()
    g1, _ = first_order_meta_gradient(model, current, replay, groups, 0.0, 1.0, True, False)
    g2, _ = first_order_meta_gradient(model, current, replay, groups, 0.1, 1.0, True, False)
    g3, _ = first_order_meta_gradient(model, current, replay, groups, 0.1, 1.0, False, True)
    g4, _ = first_order_meta_gradient(model, current, replay, groups, 0.0, 1.0, False, True)
    assert any(not torch.allclose(a, b) for a, b in zip(g1, g2, strict=True))
    assert any(not torch.allclose(a, b) for a, b in zip(g3, g4, strict=True))


def test_split_is_two_nonempty_groups():
    gen = torch.Generator().manual_seed(0)
    for n in range(2, 7):
        a, b = split(n, gen)
        assert a and b and sorted(a + b) == list(range(n))
