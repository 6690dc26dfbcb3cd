#!/usr/bin/env bash
# smg-sim on an offline GPU machine (Python 3.12 with torch, no network): `smg-sim doctor --device
# cuda` (every method's 2-site smoke run on CUDA, then step costs), one quick smg run on CUDA with
# its phase timings (cold SMD cache), a determinism check (the same smoke run twice), and
# `smg-sim bench --device cuda` at the quick and paper sizes. Every step has a time limit; the
# whole script ends within about 6 minutes. Run from the checkout with the missing packages in
# .gpu/site.tar.xz (built by make_site.sh of the GPU notes the project keeps beside it):
#     bash docs/gpu/check.sh            (figures and logs under $OUT, default /tmp/gpu_out)
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD SMG_SIM_CACHE=/tmp/smgcache
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT" /tmp/site
T0=$SECONDS; log() { echo "### [t=$((SECONDS - T0))s] $*"; }
tar -xJf .gpu/site.tar.xz -C /tmp/site || { echo "no .gpu/site.tar.xz"; exit 2; }
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
CLI="python3 -m simulator.driver.cli"
log "doctor --device cuda"
timeout 200 $CLI doctor --device cuda --out /tmp/doctor > "$OUT/doctor.out" 2> "$OUT/doctor.err"; echo "doctor rc $?"
cat "$OUT/doctor.out"; tail -3 "$OUT/doctor.err"; cp /tmp/doctor/doctor.json "$OUT/" 2>/dev/null
for f in /tmp/doctor/*/FAILED; do [ -f "$f" ] && { echo "== $f"; cat "$f"; tail -30 "$(dirname $f)/traceback.txt"; }; done 2>/dev/null | tail -60
log "quick smg on CUDA (cold SMD cache)"
timeout 90 $CLI run --sites 6 --order random --profile quick --method smg --seed 0 \
  --set runtime.device=cuda --no-dashboard --quiet --out /tmp/quick_smg 2>&1 | grep -v "^ \|^Dice\|^$" | tail -8
cp /tmp/quick_smg/metrics.json "$OUT/quick_smg_metrics.json" 2>/dev/null; cp /tmp/quick_smg/R.csv "$OUT/quick_smg_R.csv" 2>/dev/null
log "determinism: the same 2-site smoke smg run twice on CUDA"
for i in 1 2; do timeout 30 $CLI run --profile smoke --sites 2 --method smg --set runtime.device=cuda \
  --no-dashboard --quiet --out /tmp/det$i > /dev/null 2>&1; done
cmp /tmp/det1/R.csv /tmp/det2/R.csv && echo "R.csv byte-identical on CUDA" || diff /tmp/det1/R.csv /tmp/det2/R.csv
log "bench --device cuda (quick, stage 6)"
timeout 40 $CLI bench --device cuda --profile quick --methods finetune,smd_replay_matched,smg --stages 6 --steps 20 --out "$OUT/bench-quick.json" | tail -5
log "bench --device cuda (paper, stage 6)"
timeout 40 $CLI bench --device cuda --profile paper --methods finetune,smd_replay_matched,smg --stages 6 --steps 20 --out "$OUT/bench-paper.json" | tail -5
log done
