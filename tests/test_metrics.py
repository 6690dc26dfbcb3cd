import math

import numpy as np
import pytest

from simulator import metrics as M

# T = 3, rows: untrained, after stage 1, 2, 3; columns in visiting order
R3 = np.array(
    [
        [0.1, 0.2, 0.3],
        [0.8, 0.4, 0.5],
        [0.6, 0.9, 0.7],
        [0.5, 0.7, 0.95],
    ]
)


def test_mem_by_hand():
    # stage 2: mean(R[2][1]) = 0.6 ; stage 3: mean(0.5, 0.7) = 0.6
    assert M.mem(R3) == pytest.approx(0.6)


def test_gen_by_hand():
    # stage 1: mean(0.4, 0.5) = 0.45 ; stage 2: 0.7
    assert M.gen(R3) == pytest.approx((0.45 + 0.7) / 2)


def test_final_bwt_fwt_forgetting_by_hand():
    assert M.final(R3) == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    # BWT: (0.5 - 0.8) + (0.7 - 0.9) over 2
    assert M.bwt(R3) == pytest.approx((-0.3 - 0.2) / 2)
    # FWT: j=2: R[1][2]-R[0][2] = 0.4-0.2 ; j=3: R[2][3]-R[0][3] = 0.7-0.3
    assert M.fwt(R3) == pytest.approx((0.2 + 0.4) / 2)
    # Forgetting: site1 max(0.8, 0.6) - 0.5 = 0.3 ; site2 max(0.4, 0.9) - 0.7 = 0.2
    assert M.forgetting(R3) == pytest.approx(0.25)


def test_learning_accuracy_and_retention_by_hand():
    # LA: R[1][1], R[2][2], R[3][3] = 0.8, 0.9, 0.95
    assert M.learning_accuracy(R3) == pytest.approx((0.8 + 0.9 + 0.95) / 3)
    # retention: site 1 0.5 / 0.8, site 2 0.7 / 0.9
    assert M.retention(R3) == pytest.approx((0.5 / 0.8 + 0.7 / 0.9) / 2)
    # BWT splits into final Dice on earlier sites minus their Dice right after learning
    T = 3
    assert M.bwt(R3) == pytest.approx(
        np.mean(R3[T, : T - 1]) - np.mean([R3[j, j - 1] for j in range(1, T)])
    )


def test_no_forgetting_gives_zero_bwt_and_forgetting():
    R = np.array([[0.0, 0.0], [0.9, 0.1], [0.9, 0.8]])
    assert M.bwt(R) == 0.0
    assert M.forgetting(R) == 0.0


def test_single_site_metrics_undefined_are_nan():
    R = np.array([[0.2], [0.9]])
    m = M.all_metrics(R)
    assert m["Final"] == pytest.approx(0.9)
    for key in ("Mem", "Gen", "BWT", "FWT", "Forgetting", "Retention"):
        assert math.isnan(m[key]), key
    assert m["LA"] == pytest.approx(0.9)


def test_per_stage_curves():
    assert M.mem_per_stage(R3)[1:] == pytest.approx([0.6, 0.6])
    assert M.gen_per_stage(R3)[:2] == pytest.approx([0.45, 0.7])
    assert math.isnan(M.mem_per_stage(R3)[0]) and math.isnan(M.gen_per_stage(R3)[-1])


@pytest.mark.parametrize("shape", [(3, 3), (2,), (4, 2)])
def test_bad_shape_rejected(shape):
    with pytest.raises(ValueError, match="shape"):
        M.all_metrics(np.zeros(shape))
