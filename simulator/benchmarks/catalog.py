"""Benchmark specs: which data a run uses and which sites it has (driver side, no pixels).

A benchmark is named by ``data.benchmark`` (``--benchmark``):

* ``phantom`` and ``mni152`` are generated inside each site actor; their sites are
  named alpha, bravo, ..., zulu, then alpha2, ..., zulu2, alpha3, ... (260 at most).
* ``folder:PATH``, ``prostate:PATH`` and ``fundus:PATH`` are user data: one folder
  per site under ``PATH``, named after the folder. The driver lists the folder
  names and nothing else; the files are read only by the site that owns them.
"""

from __future__ import annotations

import re
from pathlib import Path

from simulator.errors import ConfigError
from simulator.paths import site_data_root

GENERATED = ("phantom", "mni152")
USER_LAYOUTS = ("folder", "prostate", "fundus")
KINDS = GENERATED + USER_LAYOUTS
#: Targets each kind accepts besides ``auto``.
TARGETS = {"phantom": (), "mni152": (), "folder": (), "prostate": (), "fundus": ("disc", "cup")}
#: Number of sites of a generated benchmark when ``--sites`` is not given.
DEFAULT_GENERATED_SITES = 6

_ALPHABET = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)
#: The sites of a generated benchmark, in order: the alphabet, then the alphabet again with 2,
#: 3, ...
SITE_NAMES = tuple(f"{name}{'' if lap == 1 else lap}" for lap in range(1, 11) for name in _ALPHABET)
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse(value: str) -> tuple[str, str]:
    """``(kind, path)`` of a benchmark spec; ``path`` is empty for generated benchmarks."""
    kind, sep, path = value.partition(":")
    if kind not in KINDS:
        raise ConfigError(
            f"data.benchmark: {value!r} is not allowed; expected one of phantom, mni152, "
            f"folder:PATH, prostate:PATH, fundus:PATH"
        )
    if kind in GENERATED and sep:
        raise ConfigError(f"data.benchmark: {kind} is generated and takes no path; got {value!r}")
    if kind in USER_LAYOUTS and not path:
        raise ConfigError(
            f"data.benchmark: {kind} needs a data folder, as {kind}:PATH; got {value!r}"
        )
    return kind, path


def normalise(value: str) -> str:
    """The spec with an absolute, existing data folder (checked when a config is built)."""
    kind, path = parse(value)
    if not path:
        return kind
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(
            f"data.benchmark: {folder}: no such folder; expected one folder per site "
            f"in the {kind} layout"
        )
    return f"{kind}:{folder}"


def kind(value: str) -> str:
    return parse(value)[0]


def is_user_data(value: str) -> bool:
    return kind(value) in USER_LAYOUTS


def data_root(value: str) -> Path:
    """The folder that holds every site's data folder (watched by the file-access trace)."""
    k, path = parse(value)
    return Path(path) if path else site_data_root() / k


def site_dir(value: str, site: str) -> Path:
    return data_root(value) / site


def site_names(value: str) -> tuple[str, ...]:
    """Every site the benchmark has, in its fixed order."""
    k, path = parse(value)
    if not path:
        return SITE_NAMES
    root = Path(path)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ConfigError(
            f"data.benchmark: {root}: no site folders; expected one folder per site "
            f"in the {k} layout"
        )
    bad = [n for n in names if not _SITE_NAME.match(n)]
    if bad:
        raise ConfigError(
            f"data.benchmark: {root / bad[0]}: a site folder name must be letters, digits, "
            f"'_', '-' or '.' (at most 64); rename the folder"
        )
    return tuple(names)


def default_sites(value: str) -> int:
    """Sites used when ``--sites`` is not given: all of a user data set, 6 of a generated one."""
    return len(site_names(value)) if is_user_data(value) else DEFAULT_GENERATED_SITES


def check_target(value: str, target: str) -> None:
    k = kind(value)
    if target != "auto" and target not in TARGETS[k]:
        allowed = ", ".join(("auto", *TARGETS[k]))
        raise ConfigError(
            f"data.target: {target!r} is not allowed for the {k} benchmark; expected {allowed}"
        )
