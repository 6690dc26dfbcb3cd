"""PGA: the first-order meta-gradient against the explicit alignment objectives, and the reuse of
per-domain gradients against the straightforward computation."""

import numpy as np
import pytest
import torch

from server.methods.domains import split
from server.methods.exact_gradient import alignment_gradient
from server.methods.inner_step import AdamStep, inner_scale, rms
from server.methods.lean_gradient import lean_gradient
from server.methods.meta_gradient import (
    Roles,
    _Functional,
    first_order_gradient,
)
from simulator.optim import Adam
from simulator.segmentation import build_model

LR = 1e-3


def _setup(seed=0, dtype=torch.float64, n_dom=3, size=8):
    model = build_model(1, 4, 1, seed=seed).to(dtype)
    gen = torch.Generator().manual_seed(seed)

    def dom():
        x = torch.rand((3, 1, size, size), generator=gen, dtype=dtype)
        return x, (x > 0.5).to(dtype)

    return model, [dom() for _ in range(n_dom)]


def _roles(use_mem=True, use_gen=True):
    # current 0, replay 1 and 2; the split puts the current site with replay 2
    return Roles(
        current=0, replay=(1, 2), group_a=(0, 2), group_b=(1,), use_mem=use_mem, use_gen=use_gen
    )


def _norm(a, b):
    return float(torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True))))


def _trained_adam(model, doms, steps=3):
    """An Adam with moments from a few steps, so its preconditioner is far from uniform."""
    opt = Adam(model.parameters(), lr=LR)
    f = _Functional(model)
    for i in range(steps):
        theta = f.params()
        for p, g in zip(model.parameters(), f.grad(f.loss(theta, doms[i % 3]), theta), strict=True):
            p.grad = g
        opt.step()
        opt.zero_grad()
    return opt


def _diff(lookahead, use_mem=True, use_gen=True, symmetric=False, adam=False):
    model, doms = _setup()
    roles = _roles(use_mem, use_gen)
    step = AdamStep(_trained_adam(model, doms), lookahead) if adam else lookahead * LR
    fo = first_order_gradient(model, doms, roles, step)
    ex = alignment_gradient(model, doms, roles, step, symmetric=symmetric)
    return _norm(fo.grads, ex.grads)


def _slope(lookaheads, diffs):
    return np.polyfit(np.log(lookaheads), np.log(diffs), 1)[0]


# The inner step moves the weights by lookahead * LR in RMS. On this 8 px U-Net a max-pool
# window changes its argmax beyond lookahead ~0.15, where the Taylor expansion stops
# holding, so the convergence is checked below that.
LOOKAHEADS = np.array([0.08, 0.04, 0.02, 0.01, 0.005])


@pytest.mark.parametrize(
    "use_mem, use_gen, adam",
    [(True, True, False), (True, False, False), (False, True, False), (True, True, True)],
)
def test_first_order_matches_the_stop_gradient_objective_to_second_order(use_mem, use_gen, adam):
    """Fixed-length steps (the identity metric) and Adam's preconditioned step (the metric P)."""
    diffs = np.array([_diff(a, use_mem, use_gen, adam=adam) for a in LOOKAHEADS])
    assert (diffs > 0).all() and (np.diff(diffs) < 0).all()
    slope = _slope(LOOKAHEADS, diffs)
    assert 1.8 < slope < 2.2, f"log-log slope {slope:.2f}, diffs {diffs}"


@pytest.mark.parametrize("adam", [False, True])
def test_the_symmetric_objective_differs_at_first_order(adam):
    diffs = np.array([_diff(a, symmetric=True, adam=adam) for a in LOOKAHEADS])
    slope = _slope(LOOKAHEADS, diffs)
    assert 0.8 < slope < 1.2, f"log-log slope {slope:.2f}, diffs {diffs}"


def test_meta_objectives_depend_on_the_inner_step():
    model, doms = _setup()
    for roles in (_roles(True, False), _roles(False, True)):
        g0 = first_order_gradient(model, doms, roles, 0.0)
        g1 = first_order_gradient(model, doms, roles, 0.1 * LR)
        assert any(not torch.allclose(a, b) for a, b in zip(g0.grads, g1.grads, strict=True))
        # lookahead 0 is the plain step, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(g0.grads, g0.plain, strict=True))


def test_the_inner_step_is_measured_in_outer_steps():
    model, doms = _setup()
    f = _Functional(model)
    theta = f.params()
    g = f.grad(f.loss(theta, doms[0]), theta)
    d = [inner_scale(g, 3 * LR) * t for t in g]
    assert rms(d) == pytest.approx(3 * LR, rel=1e-12)
    assert first_order_gradient(model, doms, _roles(), 3 * LR).inner_rms == pytest.approx(3 * LR)
    assert inner_scale([torch.zeros(3)], LR) == 0.0


def test_the_adam_inner_step_is_the_optimisers_step_scaled():
    """d = s P g with P Adam's preconditioner for g and rms(d) = lookahead * rms(Adam's step)."""
    model, doms = _setup()
    opt = _trained_adam(model, doms)
    f = _Functional(model)
    theta = f.params()
    g = f.grad(f.loss(theta, doms[1]), theta)
    inner = AdamStep(opt, 0.5)(g)
    update, denom = opt.preview(g)
    d = [inner.scale * t for t in inner.direction(g)]
    assert rms(d) == pytest.approx(0.5 * rms(update), rel=1e-5)
    for a, t, den in zip(d, g, denom, strict=True):  # parallel to g / denom, elementwise
        torch.testing.assert_close(a, inner.scale * t / den)
    # the preview is the step Adam takes, and leaves Adam's state alone
    before = [p.detach().clone() for p in model.parameters()]
    for p, t in zip(model.parameters(), g, strict=True):
        p.grad = t
    opt.step()
    for b, p, u in zip(before, model.parameters(), update, strict=True):
        torch.testing.assert_close(b - p.detach(), u, rtol=1e-5, atol=1e-9)


# -- per-domain gradients reused == the straightforward computation (a loss per group) ------------


def _group_loss(f, params, doms, idx):
    return torch.stack([f.loss(params, doms[i]) for i in idx]).mean()


def _shifted(f, theta, g, length):
    s = length / rms(g)
    return {
        n: (p.detach() - s * t).requires_grad_(True)
        for (n, p), t in zip(theta.items(), g, strict=True)
    }


def _straightforward_first_order(model, doms, roles, step):
    """The pre-reuse way: one loss per group, then autograd, with the lookahead scaling."""
    f = _Functional(model)
    theta = f.params()
    g_c = f.grad(_group_loss(f, theta, doms, [roles.current]), theta)
    total = list(g_c)
    if roles.use_mem and roles.replay:
        theta_m = _shifted(f, theta, g_c, step if roles.shift_mem else 0.0)
        g_m = f.grad(_group_loss(f, theta_m, doms, roles.replay), theta_m)
        total = [t + g for t, g in zip(total, g_m, strict=True)]
    if roles.use_gen:
        g_a = f.grad(_group_loss(f, theta, doms, roles.group_a), theta)
        theta_g = _shifted(f, theta, g_a, step if roles.shift_gen else 0.0)
        g_b = f.grad(_group_loss(f, theta_g, doms, roles.group_b), theta_g)
        total = [t + roles.lambda_gen * (a + b) for t, a, b in zip(total, g_a, g_b, strict=True)]
    return total


def _straightforward_exact(model, doms, roles, step, symmetric):
    """(The stop-gradient and symmetric objectives of a fixed-length step, shifts on.)"""
    """The explicit objective with a gradient per group loss (double backpropagation)."""
    f = _Functional(model)
    theta = f.params()
    loss_c = _group_loss(f, theta, doms, [roles.current])
    g_c = f.grad(loss_c, theta, create_graph=True)
    objective = loss_c

    def dot(lead, other):
        lead = lead if symmetric else [t.detach() for t in lead]
        return sum((a * b).sum() for a, b in zip(lead, other, strict=True))

    if roles.use_mem and roles.replay:
        loss_r = _group_loss(f, theta, doms, roles.replay)
        g_r = f.grad(loss_r, theta, create_graph=True)
        objective = objective + loss_r - step / rms(g_c) * dot(g_c, g_r)
    if roles.use_gen:
        loss_a = _group_loss(f, theta, doms, roles.group_a)
        loss_b = _group_loss(f, theta, doms, roles.group_b)
        g_a = f.grad(loss_a, theta, create_graph=True)
        g_b = f.grad(loss_b, theta, create_graph=True)
        objective = objective + roles.lambda_gen * (
            loss_a + loss_b - step / rms(g_a) * dot(g_a, g_b)
        )
    return list(torch.autograd.grad(objective, list(theta.values())))


REUSE_CASES = {
    "smg": Roles(current=0, replay=(1, 2, 3), group_a=(0, 3), group_b=(1, 2), lambda_gen=0.7),
    "smg_mem": Roles(current=0, replay=(1, 2, 3), group_a=(2,), group_b=(0, 1, 3), shift_gen=False),
    "smg_gen": Roles(current=0, replay=(1, 2, 3), group_a=(1, 2), group_b=(0, 3), shift_mem=False),
    "matched": Roles(
        current=0, replay=(1, 2), group_a=(0, 1), group_b=(2, 3), shift_mem=False, shift_gen=False
    ),
    "no_gen": Roles(current=0, replay=(1, 2, 3), use_gen=False),
    "stage_1": Roles(current=0, group_a=(2,), group_b=(1,)),  # the two views are domains 1 and 2
}


@pytest.mark.parametrize("case", sorted(REUSE_CASES))
def test_reused_per_domain_gradients_equal_the_straightforward_gradient(case):
    roles = REUSE_CASES[case]
    model, doms = _setup(seed=1, dtype=torch.float32, n_dom=4, size=16)
    for lookahead in (0.0, 1.0, 5.0):
        got = first_order_gradient(model, doms, roles, lookahead * LR).grads
        ref = _straightforward_first_order(model, doms, roles, lookahead * LR)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", sorted(REUSE_CASES))
def test_the_lean_step_gives_the_same_update_with_fewer_passes(case):
    roles = REUSE_CASES[case]
    model, doms = _setup(seed=1, dtype=torch.float32, n_dom=4, size=16)
    opt = _trained_adam(model, doms)
    steps = [lookahead * LR for lookahead in (0.0, 1.0, 5.0)] + [AdamStep(opt, 1.0)]
    for step in steps:
        full = first_order_gradient(model, doms, roles, step)
        lean = lean_gradient(model, doms, roles, step)
        # float32 rounding of the two summation orders; Adam's preconditioner (1 / sqrt(v)
        # where v is small) magnifies it a little
        tol, atol = (1e-4, 1e-6) if isinstance(step, AdamStep) else (1e-5, 1e-7)
        for a, b in zip(lean.grads, full.grads, strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=atol)
        assert lean.inner_rms == pytest.approx(full.inner_rms, rel=tol)
        for key, value in lean.logs.items():
            assert value == pytest.approx(full.logs[key], rel=1e-5), key
        assert {"loss_current"} <= set(lean.logs) and lean.domain_grads == []


@pytest.mark.parametrize("symmetric", [False, True])
def test_exact_objectives_equal_their_straightforward_form(symmetric):
    model, doms = _setup(seed=1, n_dom=4)
    roles = REUSE_CASES["smg"]
    got = alignment_gradient(model, doms, roles, 2 * LR, symmetric=symmetric).grads
    ref = _straightforward_exact(model, doms, roles, 2 * LR, symmetric)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_split_is_two_nonempty_groups():
    gen = torch.Generator().manual_seed(0)
    for n in range(2, 7):
        a, b = split(n, gen)
        assert a and b and sorted(a + b) == list(range(n))


def test_roles_refuse_an_inconsistent_plan():
    with pytest.raises(ValueError, match="J_gen needs two non-empty groups"):
        Roles(current=0, replay=(1,), group_a=(0, 1))
    with pytest.raises(ValueError, match="need a current domain"):
        Roles(current=None, replay=(1,), use_gen=False)


def test_one_pass_over_concatenated_domains_is_the_mean_of_their_losses():
    """The meta-test's single pass weighs each image 1/(K n_k): the mean of the K domain losses."""
    model, doms = _setup(seed=2, n_dom=3)
    doms = [(x[: 1 + i], y[: 1 + i]) for i, (x, y) in enumerate(doms)]  # unequal domain sizes
    f = _Functional(model)
    theta = f.params()
    straight = torch.stack([f.loss(theta, d) for d in doms]).mean()
    torch.testing.assert_close(f.mean_loss(theta, doms), straight, rtol=1e-12, atol=1e-12)
    for a, b in zip(f.grad(f.mean_loss(theta, doms), theta), f.grad(straight, theta), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
