import dataclasses

import numpy as np
import pytest

from simulator.payloads import SiteSpec
from sites.datasets import build_site_data


def spec(index, seed=1, size=32, n_train=8, n_test=4):
    return SiteSpec(
        benchmark="phantom",
        site=f"s{index}",
        site_index=index,
        seed=seed,
        image_size=size,
        n_train=n_train,
        n_test=n_test,
        target="auto",
        test_fraction=0.25,
        data_dir="",
    )


@pytest.mark.parametrize("index", range(12))
def test_valid_pairs_for_twelve_sites(index):
    d = build_site_data(spec(index, seed=100 + index))
    assert d.train_x.shape == (8, 1, 32, 32) and d.test_x.shape == (4, 1, 32, 32)
    assert d.train_x.dtype == np.float32 and d.train_y.dtype == np.uint8
    assert 0.0 <= d.train_x.min() and d.train_x.max() <= 1.0
    assert set(np.unique(d.train_y)) <= {0, 1}
    fg = d.train_y.mean(axis=(1, 2, 3))
    assert (fg > 0.005).all() and (fg < 0.5).all()


def test_deterministic_by_seed():
    a, b = build_site_data(spec(2, seed=5)), build_site_data(spec(2, seed=5))
    c = build_site_data(spec(2, seed=6))
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.train_x, c.train_x)


def test_sites_have_different_appearance():
    # the organ's mean intensity relative to the body differs between contrast families
    contrasts = []
    for i in range(4):
        d = build_site_data(spec(i, seed=3, n_train=16))
        organ = d.train_x[d.train_y == 1].mean()
        body = d.train_x[(d.train_y == 0) & (d.train_x > 0.05)].mean()
        contrasts.append(organ - body)
    assert max(contrasts) - min(contrasts) > 0.2


def test_train_and_test_are_disjoint():
    d = build_site_data(spec(0, n_train=10, n_test=10))
    train = {x.tobytes() for x in d.train_x}
    assert not any(x.tobytes() in train for x in d.test_x)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark 'ct'; known: phantom"):
        build_site_data(dataclasses.replace(spec(0), benchmark="ct"))
