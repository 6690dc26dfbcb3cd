#!/usr/bin/env bash
# The lookahead sweep of RULE.md, from a checkout of the commit it names:
#   git worktree add .gl/sweep 0bfb1a904fa0c9e335147454cbc580b579fd892f
#   bash docs/compare/tuning/sweep.sh .gl/sweep compare
# Finished runs are skipped, so it can be stopped and started again. From the second lookahead on,
# compare's own tables refuse the folder (one method at several settings) after its runs finish;
# docs/compare/tuning/tuning.py makes the tuning table instead.
set -euo pipefail
tree=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
smg=$(cd "$(dirname "$0")/../../.." && pwd)/.venv/bin/smg-sim
cd "$tree"
for L in 1.0 0.5 0.25 0.1; do
  for B in phantom mni152; do
    PYTHONPATH="$tree" "$smg" compare --profile quick --benchmark "$B" --sites 6 \
      --methods smg,smd_replay_matched --seeds 0,1 --orders random,reverse \
      --set "methods.smg.lookahead=$L" --max-parallel 2 --baseline smd_replay_matched \
      --out "$out/tuning-$B" \
      || echo "compare's tables refuse a folder of smg runs at several lookaheads; runs kept"
  done
done
