"""What the PGA methods log about alignment, the matched ablation, and the methods' own streams."""

import itertools

import numpy as np
import pytest
import torch

from server.methods import METHODS, build_method, method_class
from server.methods.alignment import cosine, gram, relative_change
from simulator.method import Batch, StageContext, resolve_hparams
from simulator.segmentation import build_model

ALIGN_KEYS = {"align_cos_mem", "align_cos_gen", "inner_over_outer", "align_rel_change"}
PGA_METHODS = ["smg", "smg_mem", "smg_gen", "pga_exact", "pga_sym", "smd_replay_matched"]


def _batches(n, replay_sites=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand((4, 1, 16, 16), generator=gen)
        replay = {}
        for k in range(replay_sites):
            rx = torch.rand((2, 1, 16, 16), generator=gen)
            replay[f"s{k}"] = (rx, (rx > 0.5).float())
        out.append(Batch(x, (x > 0.6).float(), replay))
    return out


def _run(name, batches, seed=0, dtype=torch.float32, **hp):
    """A fresh model and method trained on ``batches``; returns (method, logs, weights, ctx)."""
    model = build_model(1, 4, 2, seed=0).to(dtype)
    batches = [
        Batch(
            b.x.to(dtype),
            b.y.to(dtype),
            {k: (x.to(dtype), y.to(dtype)) for k, (x, y) in b.replay.items()},
        )
        for b in batches
    ]
    method = build_method(name, model, resolve_hparams(method_class(name), 1e-3, hp))
    replay_sites = sorted(batches[0].replay)
    ctx = StageContext(
        site="a",
        stage=2 if replay_sites else 1,
        steps=len(batches),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        replay_sites=replay_sites,
    )
    method.begin_stage(ctx)
    logs = [method.update(b) for b in batches]
    return method, logs, [p.detach().clone() for p in model.parameters()], ctx


@pytest.mark.parametrize("name", PGA_METHODS)
def test_pga_methods_log_the_alignment_statistics(name):
    _, logs, _, _ = _run(name, _batches(2))
    for log in logs:
        assert ALIGN_KEYS <= set(log), sorted(log)
        assert -1 <= log["align_cos_mem"] <= 1 and -1 <= log["align_cos_gen"] <= 1
    # at stage 1 there is no replay, so no memory cosine; smg's views still give a group cosine
    _, logs, _, _ = _run(name, _batches(2, replay_sites=0))
    assert "align_cos_mem" not in logs[0]
    assert "align_cos_gen" in logs[0]  # every PGA method trains on the two views


@pytest.mark.parametrize("name", ["mldg"])
def test_mldg_logs_its_group_alignment(name):
    _, logs, _, _ = _run(name, _batches(2, replay_sites=0))
    assert {"align_cos_gen", "align_rel_change", "inner_over_outer"} <= set(logs[0])


def test_the_meta_terms_change_the_update_with_the_lookahead():
    batches = _batches(3)
    rel = {
        la: np.mean(
            [
                log["align_rel_change"]
                for log in _run("smg", batches, lookahead=la, stats_every=1)[1]
            ]
        )
        for la in (0.0, 1.0, 5.0)
    }
    assert rel[0.0] == 0.0
    assert 0.0 < rel[1.0] < rel[5.0] and rel[5.0] > 0.01, rel


@pytest.mark.parametrize("name", ["smg", "mldg"])
def test_the_inner_step_is_lookahead_outer_steps_at_every_step(name):
    """d is lookahead times Adam's step for the leading gradient: over 60 steps, from Adam's
    first (several times lr) to its settled ones, every step's inner displacement is within
    10 % of lookahead times the parameter change the optimiser actually made."""
    for la in (0.25, 1.0, 4.0):
        logs = _run(name, _batches(60, replay_sites=0 if name == "mldg" else 2), lookahead=la)[1]
        ratio = np.array([log["inner_over_outer"] for log in logs]) / la
        assert len(ratio) == 60 and (abs(ratio - 1) <= 0.1).all(), (la, ratio.min(), ratio.max())


def test_the_inner_step_holds_over_a_whole_run(smd_backbone, tmp_path):
    """The same over a whole (smoke) run: three visits, each visit's mean inner_over_outer
    within 10 % of the lookahead."""
    import json

    from simulator.config import build_config, parse_set
    from simulator.driver import api

    out = tmp_path / "run"
    sets = [
        "runtime.engine=inprocess",
        "run.sites=3",
        "run.method=smg",
        "train.steps_per_stage=20",
        "methods.smg.lookahead=0.5",
        f"run.out={out}",
    ]
    api.run(build_config("smoke", parse_set(sets)), progress=False)
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    ratios = [s["inner_over_outer"] / 0.5 for s in stages if s.get("site")]
    assert len(ratios) == 3 and all(abs(r - 1) <= 0.1 for r in ratios), ratios


def test_each_ablation_drops_exactly_one_alignment():
    """smg_mem and smg_gen train on every plain term and view of smg; on the same first step
    smg_mem's J_gen meta-test loss is matched replay's (at theta) and its J_mem one is smg's
    (at theta_m); smg_gen the other way round."""
    first = {
        name: _run(name, _batches(1), stats_every=1)[1][0]
        for name in ("smg", "smg_mem", "smg_gen", "smd_replay_matched")
    }
    for name, log in first.items():
        for key in ("loss_current", "loss_replay", "loss_gen_a"):
            assert log[key] == first["smg"][key], (name, key)
    smg, matched = first["smg"], first["smd_replay_matched"]
    assert smg["loss_mem_meta"] != matched["loss_mem_meta"]
    assert smg["loss_gen_meta"] != matched["loss_gen_meta"]
    assert first["smg_mem"]["loss_mem_meta"] == smg["loss_mem_meta"]
    assert first["smg_mem"]["loss_gen_meta"] == matched["loss_gen_meta"]
    assert first["smg_gen"]["loss_mem_meta"] == matched["loss_mem_meta"]
    assert first["smg_gen"]["loss_gen_meta"] == smg["loss_gen_meta"]


def test_the_current_site_leads_j_gen_unless_asked_otherwise():
    """gen_lead=current (the default) puts the current site in group A on every replay step, the
    same draw otherwise; gen_lead=random leaves it in B about half the time."""
    batch = _batches(1, replay_sites=4)[0]
    for lead, want in (("current", 0), ("random", None)):
        method = _run("smg", [batch], gen_lead=lead)[0]
        plans = [method._plan(batch)[2] for _ in range(60)]
        in_a = sum(0 in roles.group_a for roles in plans)
        if want == 0:
            assert in_a == 60
        else:
            assert 10 < in_a < 50, in_a


def test_matched_replay_is_smg_without_the_inner_step():
    for replay_sites in (2, 0):
        batches = _batches(3, replay_sites)
        *_, w_smg, _ = _run("smg", batches, lookahead=0.0)
        *_, w_matched, _ = _run("smd_replay_matched", batches)
        assert all(torch.equal(a, b) for a, b in zip(w_smg, w_matched, strict=True))
        *_, w_meta, _ = _run("smg", batches, lookahead=1.0)
        assert any(not torch.equal(a, b) for a, b in zip(w_meta, w_matched, strict=True))


@pytest.mark.parametrize(
    "replay_sites, names", [(2, {"a", "s0", "s1"}), (0, {"a", "view1", "view2"})]
)
def test_stage_summary_is_the_last_steps_cosine_matrix(replay_sites, names):
    method, _, _, _ = _run("smg", _batches(2, replay_sites))
    summary = method.stage_summary()
    pairs = {frozenset(k.split("/")[1:]) for k in summary}  # the cosine is symmetric: once each
    assert pairs == {frozenset(p) for p in itertools.combinations(names, 2)}
    assert len(summary) == len(pairs) and all(-1 <= v <= 1 for v in summary.values())


def test_replay_sites_per_step_samples_earlier_sites():
    method, logs, _, _ = _run(
        "smg", _batches(4, replay_sites=4), replay_sites_per_step=2, stats_every=1
    )
    domains = {d for k in method.stage_summary() for d in k.split("/")[1:]}
    assert len(domains) == 3  # the current site and two replayed
    assert all(ALIGN_KEYS <= set(log) for log in logs)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_leave_the_batch_stream_alone(name):
    method, _, _, ctx = _run(name, _batches(2))
    fresh = torch.Generator().manual_seed(0)
    assert torch.equal(ctx.generator.get_state(), fresh.get_state()), (
        f"{name} drew from ctx.generator"
    )


@pytest.mark.parametrize("name", ["smg", "smg_gen", "smd_replay_matched"])
def test_statistics_every_nth_step_keep_the_update(name):
    """stats_every only decides which steps compute per-domain gradients: the weights match the
    every-step run to float rounding (in float64: Adam turns float32 rounding of a near-zero
    gradient into a visible step), the statistics come on steps 0, n, 2n... and the last."""
    batches = _batches(7)
    _, every, w_every, _ = _run(name, batches, dtype=torch.float64, stats_every=1)
    _, some, w_some, _ = _run(name, batches, dtype=torch.float64, stats_every=3)
    for a, b in zip(w_every, w_some, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert [i for i, log in enumerate(some) if "align_cos_mem" in log] == [0, 3, 6]
    assert all({"loss", "loss_current", "inner_over_outer"} <= set(log) for log in some)
    for i in (0, 3, 6):
        assert some[i]["align_cos_mem"] == pytest.approx(
            every[i]["align_cos_mem"], rel=1e-3, abs=1e-5
        )


def test_a_visit_averages_each_log_over_the_steps_that_logged_it():
    visit = _visit()
    visit.run(6)
    _, _, logs, _ = visit.finish()
    assert (
        visit.counts["align_cos_mem"] == 3 and visit.counts["loss_current"] == 6
    )  # steps 0, 4 and 5
    assert logs["align_cos_mem"] == pytest.approx(visit.sums["align_cos_mem"] / 3)


def _visit(match_p=0.0, match_size=0):
    from simulator.payloads import ModelArch, VisitRequest
    from simulator.visit import LocalVisit

    model = build_model(1, 4, 2, seed=0)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    x = torch.rand((8, 1, 16, 16), generator=gen)
    rx = torch.rand((4, 1, 16, 16), generator=gen)
    replay = {"s0/x": rx.numpy(), "s0/y": (rx > 0.5).float().numpy()}
    hp = resolve_hparams(method_class("smg"), 1e-3, {"stats_every": 4})
    req = VisitRequest(
        arch=ModelArch(1, 4, 2),
        method="smg",
        hparams=hp,
        stage=2,
        steps=6,
        batch_size=4,
        seed=0,
        channels_last=False,
        weights=weights,
        state={},
        replay=replay,
        match_p=match_p,
        match_size=match_size,
    )
    return LocalVisit.start(req, "a", (x, (x > 0.6).float()), torch.device("cpu"), build_method)


def test_resolution_match_degrades_current_images_from_a_stream_of_its_own():
    import torch.nn.functional as F

    plain, always, half = _visit(), _visit(1.0, 8), _visit(0.5, 8)
    b0, b1, b2 = plain.batch(), always.batch(), half.batch()
    low = F.interpolate(
        F.interpolate(b0.x, size=(8, 8), mode="area"),
        size=(16, 16),
        mode="bilinear",
        align_corners=False,
    )
    assert torch.equal(b1.x, low) and torch.equal(b1.y, b0.y)
    kept = [torch.equal(b2.x[i], b0.x[i]) for i in range(len(b0.x))]
    assert all(k or torch.equal(b2.x[i], low[i]) for i, k in enumerate(kept)) and 0 < sum(
        kept
    ) < len(kept)
    # the replay and the batch stream are the same with or without it
    assert all(torch.equal(b0.replay[k][0], b1.replay[k][0]) for k in b0.replay)
    assert torch.equal(plain.ctx.generator.get_state(), always.ctx.generator.get_state())


def test_gram_cosines_match_direct_cosines():
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(3, 2, generator=gen), torch.randn(5, generator=gen)] for _ in range(3)]
    G = gram(grads)
    flat = [torch.cat([t.reshape(-1) for t in g]).double() for g in grads]
    assert cosine(G, 0, 2) == pytest.approx(
        float(torch.nn.functional.cosine_similarity(flat[0], flat[2], dim=0))
    )
    assert relative_change(grads[0], grads[0]) == 0.0
    assert relative_change(grads[1], grads[0]) == pytest.approx(
        float((flat[1] - flat[0]).norm() / flat[0].norm())
    )
