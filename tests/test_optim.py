"""The project's Adam gives torch.optim.Adam's updates bit for bit, and spares the dynamo import."""

import subprocess
import sys

import pytest
import torch

from simulator.optim import Adam
from simulator.segmentation import build_model


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_adam_matches_torch_adam_bit_for_bit(weight_decay):
    ours = build_model(in_channels=1, width=8, depth=2, seed=0)
    ref = build_model(in_channels=1, width=8, depth=2, seed=0)
    opt_ours = Adam(ours.parameters(), lr=2e-3, weight_decay=weight_decay)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=2e-3, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        x = torch.randn(4, 1, 16, 16, generator=gen)
        for model, opt in ((ours, opt_ours), (ref, opt_ref)):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_parameters_without_gradient_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = Adam([a, b], lr=0.1)
    a.sum().backward()
    opt.step()
    assert not torch.equal(a.detach(), torch.ones(3)) and torch.equal(b.detach(), torch.ones(3))
    opt.zero_grad()
    assert a.grad is None


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lr"):
        Adam([torch.nn.Parameter(torch.ones(1))], lr=0.0)
    with pytest.raises(ValueError, match="empty"):
        Adam([], lr=1e-3)


def test_training_step_does_not_import_dynamo():
    """What the optimiser exists for: a process that trains with it never loads torch._dynamo."""
    code = (
        "import sys, torch; from simulator.optim import Adam; m = torch.nn.Conv2d(1, 2, 3); "
        "o = Adam(m.parameters()); m(torch.ones(1, 1, 5, 5)).sum().backward(); o.step(); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
