"""The one-run empirical audit of DP training: the statistics on hand-computed cases, and (slow)
the audit of the real mechanism against a control with the mechanism off."""

import math

import numpy as np
import pytest

from simulator.dp_audit import Guesses, epsilon_lower_bound, p_value


def test_all_of_r_guesses_right_bound_epsilon_by_log_q_over_one_minus_q():
    for r in (100, 1000):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)
    assert epsilon_lower_bound(1000, 1000, 1000, 0.0) == pytest.approx(5.81, abs=0.01)


def test_chance_accuracy_gives_no_bound_and_delta_only_weakens_it():
    assert epsilon_lower_bound(1000, 100, 50, 0.0) == 0.0
    strict = epsilon_lower_bound(1000, 300, 290, 0.0)
    assert 0 < epsilon_lower_bound(1000, 300, 290, 1e-4) < strict
    assert p_value(1000, 100, 60, 0.0, 0.0) == pytest.approx(0.0284, abs=1e-3)  # P[B(100,.5)>=60]


def test_guesses_count_the_extremes_only():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, False, True])
    # in: the two highest (right, wrong); out: the lowest (wrong)
    assert Guesses(2, 1).score(scores, included) == (3, 1)


@pytest.mark.slow
def test_the_dp_training_passes_its_audit_and_a_broken_one_fails_it():
    from simulator.driver.audit.dp_run import one_run_audit

    kwargs = dict(canaries=200, k_in=20, k_out=20, steps=100, batch=32)
    dp = one_run_audit(1.0, **kwargs)
    broken = one_run_audit(1.0, broken=True, **kwargs)
    assert dp["claimed_epsilon"] <= 1.0 * 1.001 and dp["samples_per_case"] > 10
    assert dp["epsilon_lower_bound"] <= dp["claimed_epsilon"]
    assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"]
