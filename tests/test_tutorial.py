"""The tutorial notebook runs from top to bottom: a smoke run, its R and plots, its privacy
audit, and a two-method comparison."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tutorial_notebook_runs_and_shows_each_result(tmp_path, monkeypatch):
    monkeypatch.setenv("SMG_TUTORIAL_DIR", str(tmp_path / "tutorial"))
    # shorter runs than a reader's; every cell and file is the same
    short = "train.steps_per_stage=4 smd.prompt_steps=2 smd.fidelity_steps=2 smd.detector_steps=2"
    monkeypatch.setenv("SMG_TUTORIAL_SETS", short)
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "tutorial.ipynb"), as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(str(o) for o in outputs)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert "R.csv" in text and "privacy_audit.json" in text  # the run folder's listing
    assert "Mem" in text and "Gen" in text and "LA" in text
    assert "PASS" in text  # the audit's verdict
    assert "smg run reproduces the first run: True" in text
    assert text.count("image/png") >= 3  # R.png, mem_gen.png, the comparison plot
    paired = (tmp_path / "tutorial" / "compare" / "paired.csv").read_text()
    assert "smg,finetune,Mem" in paired and "smg,finetune,LA" in paired
