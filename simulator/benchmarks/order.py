"""Site names and visiting orders."""

from __future__ import annotations

from simulator.benchmarks.catalog import DEFAULT_GENERATED_SITES, SITE_NAMES
from simulator.errors import ConfigError
from simulator.seeding import derive_seed, numpy_rng

ORDER_KEYWORDS = ("fixed", "random", "reverse")


def resolve_sites(
    order: str,
    n_sites: int,
    catalog: tuple[str, ...] = SITE_NAMES,
    default: int = DEFAULT_GENERATED_SITES,
) -> list[str]:
    """The set of sites of a run: the first ``n_sites`` names, or the names an order lists.

    ``n_sites == 0`` means every site an order lists, else the first ``default`` of ``catalog``.
    """
    if n_sites == 0:
        n_sites = (
            len([n for n in order.split(",") if n.strip()])
            if order not in ORDER_KEYWORDS
            else (min(default, len(catalog)))
        )
    if n_sites < 1:
        raise ConfigError(f"--sites must be >= 1, got {n_sites}")
    if order in ORDER_KEYWORDS:
        if n_sites > len(catalog):
            raise ConfigError(f"--sites {n_sites}: this benchmark has {len(catalog)} sites at most")
        return list(catalog[:n_sites])
    names = [n.strip() for n in order.split(",") if n.strip()]
    if not names:
        raise ConfigError(
            f"--order {order!r}: expected fixed, random, reverse or a comma list of site names"
        )
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ConfigError(
            f"--order: unknown site name {unknown[0]!r}; known sites: {', '.join(catalog)}"
        )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"--order: site {dup[0]!r} is listed more than once")
    if len(names) != n_sites:
        raise ConfigError(
            f"--order lists {len(names)} sites but --sites is {n_sites}; list exactly {n_sites} "
            "names"
        )
    return names


def resolve_order(order: str, sites: list[str], run_seed: int) -> list[str]:
    """The visiting order: fixed, reverse, random (drawn from the run seed) or the list given."""
    if order == "fixed" or order not in ORDER_KEYWORDS:
        return list(sites)
    if order == "reverse":
        return list(reversed(sites))
    rng = numpy_rng(derive_seed(run_seed, "order"))
    return [sites[i] for i in rng.permutation(len(sites))]
