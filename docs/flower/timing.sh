#!/bin/bash
# the same smoke run (6 sites, random order, seed 0, default method smg) three ways, one after another
set -x
cd "$(dirname "$0")/../.."
export PATH=.venv/bin:$PATH
# docs/flower/ holds R.csv, metrics.json and privacy_audit.md copied from these runs
O=${OUT:-/tmp/smg-flower-timing}; rm -rf $O; mkdir -p $O
t0=$(date +%s.%N)
smg-sim run --profile smoke --sites 6 --order random --seed 0 --no-dashboard --quiet --out $O/ray > $O/ray.log 2>&1
t1=$(date +%s.%N)
export FLWR_HOME=/tmp/flwrhome2 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
rm -rf $FLWR_HOME
flwr run . local --stream --federation-config "num-supernodes=6 client-resources-num-cpus=2 init-args-num-cpus=2" --run-config "profile='smoke' sites=6 order='random' seed=0 out='$O/flwr-sim'" > $O/flwr-sim.log 2>&1 || { sleep 20; flwr run . local --stream --federation-config "num-supernodes=6 client-resources-num-cpus=2 init-args-num-cpus=2" --run-config "profile='smoke' sites=6 order='random' seed=0 out='$O/flwr-sim'" >> $O/flwr-sim.log 2>&1; }
t2=$(date +%s.%N)
pkill -f "flower-superlink --insecure --simulation" ; sleep 3
unset FLWR_HOME
smg-sim flower up --sites 6 --dir $O/dep > $O/dep-up.log 2>&1
t3=$(date +%s.%N)
FLWR_HOME=$O/dep/flwr flwr run . smg-local --stream --run-config "profile='smoke' sites=6 order='random' seed=0 out='$O/deployment'" > $O/deployment.log 2>&1
t4=$(date +%s.%N)
smg-sim flower down --dir $O/dep >> $O/dep-up.log 2>&1
python3 -c "print({'ray_run_s': $t1-$t0, 'flwr_run_simulation_s': $t2-$t1, 'flower_up_s': $t3-$t2, 'flwr_run_deployment_s': $t4-$t3})" > $O/times.txt
echo done >> $O/times.txt
