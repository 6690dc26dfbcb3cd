import pytest

from simulator.benchmarks.order import SITE_NAMES, resolve_order, resolve_sites
from simulator.config import ConfigError


def test_fixed_and_reverse():
    sites = resolve_sites("fixed", 4)
    assert sites == list(SITE_NAMES[:4])
    assert resolve_order("fixed", sites, 0) == sites
    assert resolve_order("reverse", sites, 0) == sites[::-1]


def test_random_is_seeded_permutation():
    sites = resolve_sites("random", 8)
    a, b = resolve_order("random", sites, 1), resolve_order("random", sites, 1)
    assert a == b and sorted(a) == sorted(sites)
    others = {tuple(resolve_order("random", sites, s)) for s in range(2, 8)}
    assert len(others) > 1


def test_explicit_list():
    sites = resolve_sites("charlie,alpha,hotel", 3)
    assert resolve_order("charlie,alpha,hotel", sites, 0) == ["charlie", "alpha", "hotel"]


def test_twelve_sites_and_more():
    assert len(resolve_sites("random", 12)) == 12
    many = resolve_sites("fixed", 48)
    assert many[25:28] == ["zulu", "alpha2", "bravo2"] and len(set(many)) == 48
    with pytest.raises(ConfigError, match="260 sites at most"):
        resolve_sites("fixed", 261)


def test_zero_sites_means_the_benchmark_default():
    assert resolve_sites("fixed", 0) == ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    assert resolve_sites("charlie,alpha", 0) == ["charlie", "alpha"]
    assert resolve_sites("reverse", 0, ("north", "south", "west")) == ["north", "south", "west"]


@pytest.mark.parametrize(
    "order, n, pattern",
    [
        ("alpha,bravo", 3, "lists 2 sites but --sites is 3"),
        ("alpha,zzz", 2, "unknown site name 'zzz'; known sites: alpha, bravo"),
        ("alpha,alpha", 2, "listed more than once"),
        ("fixed", -1, "--sites must be >= 1"),
        (",", 1, "expected fixed, random, reverse"),
    ],
)
def test_bad_orders(order, n, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_sites(order, n)


def test_zero_sites_takes_every_site_of_a_user_data_set(tmp_path):
    from simulator.config import build_config, parse_set
    from simulator.driver.plan import run_sites

    names = [f"site{i}" for i in range(8)]  # more than the 6 of a generated benchmark
    for n in names:
        (tmp_path / n).mkdir()
    cfg = build_config("smoke", parse_set([f"data.benchmark=folder:{tmp_path}", "run.order=fixed"]))
    assert run_sites(cfg) == names
