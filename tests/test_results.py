"""What a run writes besides R: the alignment matrices and the phase clock."""

import numpy as np
import pytest

from simulator.driver.phases import PHASES, PhaseClock
from simulator.driver.plots import cosine_matrices, plot_alignment


def test_cosine_matrices_from_stage_logs(tmp_path):
    logs = [
        {"stage": 0},
        {"stage": 1, "cos/view1/view2": 0.5, "cos/view2/view1": 0.5},
        {"stage": 2, "cos/alpha/bravo": -0.25, "cos/bravo/alpha": -0.25, "loss": 1.0},
    ]
    mats = cosine_matrices(logs)
    assert [m[0] for m in mats] == [1, 2]
    stage, names, M = mats[1]
    assert names == ["alpha", "bravo"] and np.allclose(M, [[1.0, -0.25], [-0.25, 1.0]])
    assert plot_alignment(logs, tmp_path / "a.png") and (tmp_path / "a.png").stat().st_size > 0
    assert not plot_alignment([{"stage": 1, "loss": 0.3}], tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()


def test_phase_clock_keeps_each_stage_apart():
    clock = PhaseClock()
    clock.add("training", 2.0)
    clock.add("evaluation", 1.0)
    assert clock.end_stage() == {"training": 2.0, "evaluation": 1.0}
    clock.add("training", 0.5)
    assert clock.end_stage() == {"training": 0.5}
    assert clock.total["training"] == 2.5 and set(clock.total) == set(PHASES)
    with pytest.raises(KeyError, match="unknown phase 'napping'"):
        clock.add("napping", 1.0)
