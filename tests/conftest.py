"""Shared fixtures: one Ray instance per test session, with a fixed CPU count."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# keep the tests' SMD backbones and simulated site disks out of the user's cache
os.environ["SMG_SIM_CACHE"] = tempfile.mkdtemp(prefix="smg-sim-test-cache-")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: where the session's Ray exports its metrics (Prometheus text format)
METRICS_PORT = _free_port()


def start_session_ray() -> None:
    """The session's Ray instance (2 CPUs, no dashboard, metrics on METRICS_PORT), if none runs."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            configure_logging=True,
            log_to_driver=False,
            _metrics_export_port=METRICS_PORT,
        )


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once and share it across the session (a test that ends it starts it again)."""
    import ray

    start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture()
def smoke_spec():
    """A tiny phantom site spec."""
    from simulator.payloads import SiteSpec

    return SiteSpec(
        benchmark="phantom",
        site="alpha",
        site_index=0,
        seed=7,
        image_size=32,
        n_train=12,
        n_test=6,
        target="auto",
        test_fraction=0.25,
        data_dir="",
    )


@pytest.fixture(scope="session")
def smd_backbone():
    """A tiny SMD backbone (smoke profile), pre-trained once into a temporary cache."""
    from simulator.config import build_config
    from simulator.smd.pretrain import ensure_backbone, smd_spec

    path, _ = ensure_backbone(smd_spec(build_config("smoke"), 1))
    return path


#: the settings of :func:`smd_replay_run` (the grid-sharing test makes the same run from a
#: shared folder)
SMD_REPLAY_SETS = (
    "runtime.engine=inprocess",
    "run.sites=2",
    "train.steps_per_stage=2",
    "run.method=smd_replay",
    "run.order=reverse",
)


@pytest.fixture(scope="session")
def smd_replay_run(smd_backbone, tmp_path_factory):
    """One smoke run of `smd_replay` (2 sites, reverse order, seed 0) made once per test session:
    prompts tuned at the sites, replay sent with the second visit, fidelity and attribution."""
    from simulator.config import build_config, parse_set
    from simulator.driver import api

    out = tmp_path_factory.mktemp("smd-replay") / "run"
    return api.run(
        build_config("smoke", parse_set([*SMD_REPLAY_SETS, f"run.out={out}"])), progress=False
    )
