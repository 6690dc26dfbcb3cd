"""An existing multi-node Ray cluster: sites pinned to the nodes that offer their resource, a
run and a parallel comparison joining it. Ray's own test cluster (three raylets on this machine)
runs in a subprocess of its own, apart from the test session's Ray."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from ray.cluster_utils import Cluster
    out = sys.argv[1]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    a = c.add_node(num_cpus=1, resources={"hospital_a": 1})
    b = c.add_node(num_cpus=1, resources={"hospital_b": 1})
    c.wait_for_nodes()
    cli = [sys.executable, "-m", "simulator.driver.cli"]
    common = ["--profile", "smoke", "--address", c.address,
              "--site-resources", "alpha=hospital_a,bravo=hospital_b",
              "--set", "run.sites=2", "--set", "train.steps_per_stage=4"]
    # each run of the comparison is an `smg-sim run --address` driver of its own joining the
    # cluster; the refused run joins at the same time
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [subprocess.Popen(cli + ["compare", "--methods", "finetune", "--seeds", "0,1",
                                     "--orders", "fixed", "--max-parallel", "2",
                                     "--out", out + "/cmp", *common], **pipes),
             subprocess.Popen(cli + ["run", "--quiet", "--out", out + "/bad", "--profile", "smoke",
                                     "--address", c.address, "--set", "run.sites=2",
                                     "--site-resources", "alpha=hospital_z"], **pipes)]
    errs = [p.communicate(timeout=500)[1] for p in procs]
    print(json.dumps({"a": a.node_id, "b": b.node_id, "rc": [p.returncode for p in procs],
                      "err": [e[-2000:] for e in errs]}))
    c.shutdown()
""")


@pytest.mark.slow  # 30-35 s: a three-node Ray cluster of its own; CI runs it after the suite
def test_sites_run_on_the_nodes_that_hold_their_resource(tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["rc"][0] == 0, info["err"]
    runs = sorted((tmp_path / "cmp" / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        where = json.loads((run / "actors.json").read_text())["sessions"][0]["actors"]
        assert (
            where["site-alpha"]["node_id"] == info["a"]
            and where["site-bravo"]["node_id"] == info["b"]
        ), run
        audit = (run / "privacy_audit.md").read_text()
        assert "## Where each process ran" in audit and info["a"][:12] in audit
    # a resource no node offers is refused before the run waits for ever
    assert info["rc"][1] == 2 and "no node of the Ray cluster offers hospital_z" in info["err"][1]
