"""Exponential moving averages of the SMD backbone's weights during a 500-step pre-training (quick
profile): their denoising loss on a held-out public draw (fixed noise), against the final weights
and the 1000-step backbone of the quick profile (from the SMD cache; pre-trained if missing).

    python docs/diagnostics/pretrain_ema.py > docs/diagnostics/pretrain_ema.txt
"""

import torch

from simulator.config import build_config, parse_set
from simulator.seeding import torch_generator
from simulator.smd.backbone import SMDBackbone, to_model_space
from simulator.smd.cache import load_backbone
from simulator.smd.pretrain import PUBLIC_POOLS, ensure_backbone, smd_spec

torch.set_num_threads(2)


def _ema_fn(decay):
    """Exponential moving average whose decay ramps up as (1 + n) / (10 + n) to ``decay``."""

    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


cfg = build_config("quick", parse_set(["smd.pretrain_steps=500"]))
spec = smd_spec(cfg, 1)
make_pool, _ = PUBLIC_POOLS[spec.benchmark]
# held-out public draw (a seed no pre-training uses)
hi, hm, hc = make_pool(999, 256, spec.data_size)
HX, HC = to_model_space(hi, hm, spec.image_size), torch.from_numpy(hc)


def evaluate(model):
    model.eval()
    g = torch_generator(12345)
    tot = 0
    with torch.no_grad():
        for _ in range(4):
            tot += float(model.denoise_loss(HX, model.tokens_from_condition(HC), g))
    model.train()
    return tot / 4


ref = load_backbone(ensure_backbone(smd_spec(build_config("quick"), 1))[0])
print("1000-step cached backbone eval", evaluate(ref))
images, masks, cond = make_pool(spec.public_seed, spec.public_pool, spec.data_size)
X = to_model_space(images, masks, spec.image_size)
C = torch.from_numpy(cond)
with torch.random.fork_rng(devices=[]):
    torch.manual_seed(spec.public_seed)
    model = SMDBackbone(spec)
gen = torch_generator(spec.public_seed + 1)
opt = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=1e-4)
warmup = max(1, spec.pretrain_steps // 20)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * (1 - i / spec.pretrain_steps))
)
emas = {
    d: torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_fn(d))
    for d in (0.95, 0.98, 0.99)
}
for _step in range(1, spec.pretrain_steps + 1):
    idx = torch.randint(len(X), (spec.pretrain_batch,), generator=gen)
    loss = model.denoise_loss(X[idx], model.tokens_from_condition(C[idx]), gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    for e in emas.values():
        e.update_parameters(model)
print("500 raw eval", evaluate(model))
for d, e in emas.items():
    print("500 ema", d, evaluate(e.module))
