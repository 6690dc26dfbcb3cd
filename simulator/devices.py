"""Which torch device a process computes on, and the one place data crosses to and from it.

Site data, replay, queries and prompts move to the compute device through :func:`to_device`
(which asserts they arrived there); results come back to the CPU through :func:`to_host`. Every
device-sensitive path (a visit, evaluation, SMD pre-training, prompt tuning, sampling,
fidelity, memorisation, attribution) goes through these two, so a tensor left on the wrong
side is caught where it crosses, and tests can run every path on the ``meta`` device (no
values) by faking :func:`to_host`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from simulator.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a CUDA device is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device={name}: this process sees no CUDA device")
        # the same kernels for the same shapes on every run (cuDNN's autotuner picks by timing)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


def on(device: torch.device, t: torch.Tensor) -> bool:
    """Whether ``t`` lives on ``device`` (``cuda`` matches ``cuda:0`` and any other index)."""
    if t.device.type != device.type:
        return False
    return device.index is None or t.device.index in (None, device.index)


def to_device(
    device: torch.device, *arrays: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """The one place site data, replay, queries and prompts move to the compute device: each
    array as a ``dtype`` tensor on ``device`` (numpy arrays are copied, never shared)."""
    out = []
    for a in arrays:
        t = torch.from_numpy(np.array(a, copy=True)) if isinstance(a, np.ndarray) else a
        t = t.to(device=device, dtype=dtype)
        assert on(device, t), f"a tensor meant for {device} is on {t.device}"
        out.append(t)
    return tuple(out)


def to_host(t: torch.Tensor) -> np.ndarray:
    """The one place results come back to the CPU: ``t`` detached, as a numpy array.

    Inside :func:`placement_check`, a tensor of the ``meta`` device (which holds no values)
    comes back as zeros of its shape."""
    if t.device.type == "meta" and _state["placement_check"]:
        return np.zeros(tuple(t.shape), dtype=torch.empty((), dtype=t.dtype).numpy().dtype)
    return t.detach().to("cpu").numpy()


_state = {"placement_check": False}


@contextmanager
def placement_check() -> Iterator[None]:
    """Run device-sensitive code on the ``meta`` device to check where every tensor goes,
    without computing values: results read through :func:`to_host` are zeros."""
    _state["placement_check"] = True
    try:
        yield
    finally:
        _state["placement_check"] = False


def device_of(module: torch.nn.Module) -> torch.device:
    """The device a module's parameters live on."""
    return next(module.parameters()).device
