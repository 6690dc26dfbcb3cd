#!/usr/bin/env bash
# DP utility grid (issue: a formal privacy bound in the paper's setting): smg and matched replay
# on the phantom tuning cells (seeds 0-1 x random/reverse, quick profile, 6 sites) at
# privacy.dp_epsilon 0 (no DP), 4, 1 and 16, in that order, one comparison folder per epsilon
# (the runs without DP are also RULE.md's re-check of a new default on the phantom tuning cells).
#   git worktree add .gl/dp <commit>; TREE=.gl/dp bash docs/compare/dp/utility.sh compare
# (TREE: a checkout of the commit the runs use, so later edits do not change their code)
# Finished runs are skipped, so it can be stopped and started again; then
#   .venv/bin/python docs/compare/dp/utility.py compare docs/compare/dp
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
smg=$(cd "$(dirname "$0")/../../.." && pwd)/.venv/bin/smg-sim
tree=$(cd "${TREE:-$(dirname "$0")/../../..}" && pwd)
cd "$tree"
for E in ${EPSILONS:-0 4 1 16}; do
  PYTHONPATH="$tree" "$smg" compare --profile quick --benchmark phantom --sites 6 \
    --methods smg,smd_replay_matched --seeds 0,1 --orders random,reverse \
    --set "privacy.dp_epsilon=$E" --max-parallel 2 --baseline smd_replay_matched \
    --out "$out/dp-e$E"
done
