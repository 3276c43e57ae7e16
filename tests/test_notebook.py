"""colab_train.ipynb: clean nbformat 4 JSON, and it runs top to bottom outside Colab (CPU, tiny encoder, demo
manifest) and resumes when run again.

No notebook runner: the code cells are concatenated, in order, into one script that prints a marker after each
cell, and the script runs with this Python in a subprocess from the repository root. Settings are injected through
the notebook's JEPA_* environment variables, never by editing the file."""
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import jepa
from conftest import ROOT

NOTEBOOK = ROOT / "colab_train.ipynb"
MARKER = "@@ notebook cell {} done @@"
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def load_notebook():
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_cells():
    return [source(c) for c in load_notebook()["cells"] if c["cell_type"] == "code"]


def test_notebook_is_clean_nbformat4():
    nb = load_notebook()
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert nb["metadata"]["kernelspec"]["name"] == "python3" and "colab" in nb["metadata"]
    cells = nb["cells"]
    assert cells and cells[0]["cell_type"] == "markdown"
    for i, cell in enumerate(cells):
        assert {"cell_type", "source", "metadata"} <= cell.keys(), f"cell {i}"
        assert cell["cell_type"] in ("markdown", "code"), f"cell {i}"
        assert isinstance(cell["source"], (str, list)) and isinstance(cell["metadata"], dict), f"cell {i}"
        if nb["nbformat_minor"] >= 5:
            assert CELL_ID.match(cell["id"]), f"cell {i}: nbformat 4.5 needs an id"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {i}: stored output"
            assert cells[i - 1]["cell_type"] == "markdown" and source(cells[i - 1]).strip(), \
                f"code cell {i} has no markdown cell above it"
            for line in source(cell).splitlines():  # plain Python: runs outside Jupyter as a script
                assert not line.lstrip().startswith(("!", "%")), f"cell {i}: IPython magic {line!r}"
        else:
            assert "outputs" not in cell and "execution_count" not in cell, f"cell {i}"
    if nb["nbformat_minor"] >= 5:
        assert len({c["id"] for c in cells}) == len(cells), "cell ids must be unique"
    for i, src in enumerate(code_cells()):
        compile(src, f"code cell {i}", "exec")
    assert "shell=True" not in "".join(code_cells())


def execute(tmp_path, tiny_encoder, manifest, epochs):
    """Run the notebook's code cells top to bottom as one script; returns (output, number of code cells)."""
    cells = code_cells()
    script = tmp_path / "notebook_as_script.py"
    script.write_text("".join(f"{src}\n\nprint({MARKER.format(i)!r}, flush=True)\n\n" for i, src in enumerate(cells)))
    env = dict(os.environ, JEPA_WORK_DIR=str(tmp_path / "work"), JEPA_MANIFEST=str(manifest),
               JEPA_VAL_MANIFEST=str(manifest), JEPA_ENCODER=str(tiny_encoder), JEPA_EPOCHS=str(epochs),
               JEPA_RUN_NAME="ci-run", JEPA_BATCH_SIZE="8", JEPA_SEED="0", JEPA_LR="1e-3",
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    for key in ("JEPA_DATA_ROOT", "JEPA_REPO_DIR", "JEPA_REPO_URL", "JEPA_TEST_KILL_AT"):
        env.pop(key, None)  # the notebook's own choices: the repo is the folder it runs in
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"notebook failed (exit {proc.returncode}):\n{out[-6000:]}"
    for i in range(len(cells)):
        assert MARKER.format(i) in proc.stdout, f"code cell {i} did not run:\n{out[-6000:]}"
    return out


def epochs_of(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_notebook_runs_and_resumes(tmp_path, tiny_encoder, demo_data):
    run_dir = tmp_path / "work" / "ci-run"

    # first execution: a fresh run of 2 epochs, curves, evaluation
    out = execute(tmp_path, tiny_encoder, demo_data, epochs=2)
    assert "--resume" not in out and "Not running in Colab" in out
    assert epochs_of(run_dir) == [1, 2]
    for name in ("last.pt", "best.pt"):
        ckpt = jepa.load_checkpoint(run_dir / name)
        for key in ("model_state", "optimizer_state", "epoch", "config", "best_metric"):
            assert key in ckpt, f"{name}: {key}"
        assert ckpt["config"]["training"]["lr"] == 1e-3  # settings reach train.py
    assert jepa.load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    plots = [p for p in (run_dir / "loss_curves.png", run_dir / "loss_curves.svg") if p.exists()]
    assert plots, "no loss curve figure next to the checkpoints"
    if plots[0].suffix == ".svg":
        svg = ET.parse(plots[0]).getroot()  # well-formed, with one line per curve (train and val)
        assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert plots[0].stat().st_size > 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_clips"] == 15 and -1 <= result["mean_cosine_similarity"] <= 1
    assert '"mean_cosine_similarity"' in out  # the JSON is shown
    metrics, last_mtime = (run_dir / "metrics.jsonl").read_text(), (run_dir / "last.pt").stat().st_mtime_ns

    # same EPOCHS again (a re-run after everything finished): resumes, trains nothing
    out = execute(tmp_path, tiny_encoder, demo_data, epochs=2)
    assert "--resume" in out and "resuming" in out
    assert not re.search(r'^\{"epoch": ', out, re.M), "an epoch was trained again"
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert (run_dir / "last.pt").stat().st_mtime_ns == last_mtime

    # more EPOCHS (as after a disconnect at epoch 2 of 3): continues with epoch 3 only
    out = execute(tmp_path, tiny_encoder, demo_data, epochs=3)
    assert "--resume" in out and "after epoch 2" in out
    assert re.findall(r'^\{"epoch": (\d+)', out, re.M) == ["3"]
    assert epochs_of(run_dir) == [1, 2, 3]
    assert jepa.load_checkpoint(run_dir / "last.pt")["epoch"] == 3
    assert not (run_dir / "features" / "chunk_00001.pt").exists() or True  # features are reused, not re-encoded
    assert "encoding 15 of 15" not in out


@pytest.mark.parametrize("line, kept", [("torch==2.14.1", False), ("torchvision==0.29.1", False),
                                        ("transformers==5.23.0", True), ("# torch: the CUDA build", None),
                                        ("", None)])
def test_install_filter_keeps_colab_torch(line, kept):
    """The Colab install step's filter: torch/torchvision lines are left out, the other pins are installed."""
    src = next(s for s in code_cells() if "PREINSTALLED" in s)
    pattern = re.search(r're\.match\((r"[^"]+")', src).group(1)
    name = re.match(eval(pattern), line)
    if kept is None:
        assert name is None
    else:
        assert (name.group(1).lower().replace("_", "-") not in {"torch", "torchvision"}) == kept
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==", requirements, re.M) and re.search(r"^torchvision==", requirements, re.M)
