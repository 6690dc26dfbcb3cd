"""The method registry: every method is registered here by name, explicitly."""

from __future__ import annotations

from typing import Any

from torch import nn

from server.methods.er_real import ERReal
from server.methods.ewc import EWC
from server.methods.finetune import Finetune
from server.methods.fish import Fish
from server.methods.joint import Joint
from server.methods.lwf import LwF
from server.methods.mldg import MLDG
from server.methods.pga_exact import PGAExact
from server.methods.pga_sym import PGASym
from server.methods.smd_replay import SMDReplay
from server.methods.smd_replay_matched import SMDReplayMatched
from server.methods.smg import SMG, SMGGen, SMGMem
from simulator.errors import UnknownMethodError
from simulator.method import Method

METHODS: dict[str, type[Method]] = {
    Finetune.name: Finetune,
    SMDReplay.name: SMDReplay,
    SMDReplayMatched.name: SMDReplayMatched,
    ERReal.name: ERReal,
    Joint.name: Joint,
    EWC.name: EWC,
    LwF.name: LwF,
    MLDG.name: MLDG,
    Fish.name: Fish,
    SMG.name: SMG,
    SMGMem.name: SMGMem,
    SMGGen.name: SMGGen,
    PGAExact.name: PGAExact,
    PGASym.name: PGASym,
}


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None


def build_method(name: str, model: nn.Module, hparams: dict[str, Any]) -> Method:
    """Instantiate a registered method around ``model`` (called inside the visited site)."""
    return method_class(name)(model, hparams)
