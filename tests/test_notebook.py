"""colab_train.ipynb: clean nbformat 4 JSON, and it runs top to bottom outside Colab (CPU, tiny encoder, demo
manifest) and resumes when run again.

No notebook runner: the code cells are concatenated, in order, into one script that prints a marker after each
cell, and the script runs with this Python in a subprocess from the repository root. Settings are injected through
the notebook's JEPA_* environment variables, never by editing the file."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

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


def start(tmp_path, work_dir, tiny_encoder, manifest, epochs):
    """Start the notebook's code cells, top to bottom, as one script in a subprocess (Popen, output to a file)."""
    cells = code_cells()
    script = tmp_path / "notebook_as_script.py"
    script.write_text("".join(f"{src}\n\nprint({MARKER.format(i)!r}, flush=True)\n\n" for i, src in enumerate(cells)))
    env = dict(os.environ, JEPA_WORK_DIR=str(work_dir), JEPA_MANIFEST=str(manifest), JEPA_VAL_MANIFEST=str(manifest),
               JEPA_ENCODER=str(tiny_encoder), JEPA_EPOCHS=str(epochs), JEPA_RUN_NAME="ci-run",
               JEPA_BATCH_SIZE="8", JEPA_SEED="0", JEPA_LR="1e-3", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")  # one thread each: two executions run side by side below
    for key in ("JEPA_DATA_ROOT", "JEPA_REPO_DIR", "JEPA_REPO_URL", "JEPA_TEST_KILL_AT"):
        env.pop(key, None)  # the notebook's own choices: the repository is the folder it runs in
    log = open(work_dir.parent / f"{work_dir.name}-{epochs}.log", "w+")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    return proc, log, len(cells)


def finish(started):
    """Wait for a started execution; assert it exited 0 and every code cell ran; returns its output."""
    proc, log, n_cells = started
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    out = log.read()
    log.close()
    assert proc.returncode == 0, f"notebook failed (exit {proc.returncode}):\n{out[-6000:]}"
    for i in range(n_cells):
        assert MARKER.format(i) in out, f"code cell {i} did not run:\n{out[-6000:]}"
    return out


def epochs_of(run_dir):
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_notebook_runs_and_resumes(tmp_path, tiny_encoder, demo_data):
    work = tmp_path / "work"
    run_dir = work / "ci-run"

    # first execution: a fresh run of 2 epochs, curves, evaluation
    out = finish(start(tmp_path, work, tiny_encoder, demo_data, epochs=2))
    assert "--resume" not in out and "Not running in Colab" in out
    assert epochs_of(run_dir) == [1, 2]
    for name in ("last.pt", "best.pt"):
        ckpt = jepa.load_checkpoint(run_dir / name)
        for key in ("model_state", "optimizer_state", "epoch", "config", "best_metric"):
            assert key in ckpt, f"{name}: {key}"
        assert ckpt["config"]["training"]["lr"] == 1e-3  # the settings reach train.py
    assert jepa.load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    plots = [p for p in (run_dir / "loss_curves.png", run_dir / "loss_curves.svg") if p.exists()]
    assert plots and plots[0].stat().st_size > 0, "no loss curve figure next to the checkpoints"
    if plots[0].suffix == ".svg":
        svg = ET.parse(plots[0]).getroot()  # well-formed, one line per curve (train and val)
        assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_clips"] == 15 and -1 <= result["mean_cosine_similarity"] <= 1
    assert '"mean_cosine_similarity"' in out  # the JSON is shown

    # executed again, in parallel on two copies of that state (they share nothing; it saves ~25 s):
    # the same EPOCHS (a re-run after the run finished) and a larger one (a re-run after a disconnect)
    more = tmp_path / "work-more"
    shutil.copytree(work, more)
    metrics, last_mtime = (run_dir / "metrics.jsonl").read_text(), (run_dir / "last.pt").stat().st_mtime_ns
    same_run, more_run = start(tmp_path, work, tiny_encoder, demo_data, 2), start(tmp_path, more, tiny_encoder,
                                                                                  demo_data, 3)
    out_same, out_more = finish(same_run), finish(more_run)

    assert "--resume" in out_same and "resuming" in out_same
    assert not re.search(r'^\{"epoch": ', out_same, re.M), "an epoch was trained again"
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert (run_dir / "last.pt").stat().st_mtime_ns == last_mtime

    assert "--resume" in out_more and "after epoch 2" in out_more
    assert re.findall(r'^\{"epoch": (\d+)', out_more, re.M) == ["3"]  # epoch 3 only: none trained twice
    assert epochs_of(more / "ci-run") == [1, 2, 3]
    assert jepa.load_checkpoint(more / "ci-run" / "last.pt")["epoch"] == 3
    assert "encoding 15 of 15" not in out_more  # the encoded features are reused


def test_colab_install_keeps_preinstalled_torch(tmp_path, monkeypatch):
    """The code cell's Colab branch (simulated, nothing installed): pip gets every pin but torch/torchvision."""
    cells = {c["id"]: source(c) for c in load_notebook()["cells"]}
    calls = []

    def fake_run_live(cmd, cwd=None):
        requirements = cmd[cmd.index("-r") + 1] if "-r" in cmd else None
        calls.append((cmd, Path(requirements).read_text().split() if requirements else None))

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the cell's temporary requirements file
    ns = {}
    exec(cells["helpers"], ns)
    ns.update(IN_COLAB=True, WORK_DIR=str(tmp_path), torch=None, run_live=fake_run_live)
    exec(cells["code"], ns)
    assert ns["REPO_DIR"] == str(ROOT)  # the notebook's own checkout: no clone, no pull
    [(cmd, pins)] = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    wanted = [ln.strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert pins == [p for p in wanted if not p.startswith(("torch==", "torchvision=="))]
    assert any(p.startswith("torch==") for p in wanted) and not any(p.startswith("torch") for p in pins)
