"""colab_train.ipynb: clean nbformat 4 JSON, and it runs top to bottom outside Colab (CPU, tiny encoder, demo
manifest) and resumes when run again.

No notebook runner: the code cells are concatenated, in order, into one script that prints a marker after each
cell, and the script runs with this Python in a subprocess from the repository root. Settings are injected
through the notebook's JEPA_* environment variables, never by editing the file."""
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import jepa
from conftest import ROOT
from readme_examples import install_in_hf_cache

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


HUB_ID = "facebook/vjepa2-vitl-fpc64-256"


def start(tmp_path, work_dir, data, epochs):
    """Start the notebook's code cells, top to bottom, as one script in a subprocess (Popen, output to a
    file).

    `data` (the `colab_data` fixture): a frames archive that the notebook extracts to a local folder and
    builds its manifests from. The encoder is named by its hub id and found only in the notebook's Drive cache
    (WORK_DIR/hf-cache, offline), so a run that passes proves HF_HOME points there."""
    cells = code_cells()
    script = tmp_path / "notebook_as_script.py"
    script.write_text("".join(f"{src}\n\nprint({MARKER.format(i)!r}, flush=True)\n\n"
                              for i, src in enumerate(cells)))
    env = dict(os.environ, JEPA_WORK_DIR=str(work_dir), JEPA_DATA_SOURCE=str(data["archive"]),
               JEPA_DATA_KIND="frames", JEPA_LOCAL_DATA=str(data["local"]), JEPA_DATA_SUBDIR="frames",
               JEPA_FRAMES="8", JEPA_STRIDE="8", JEPA_LABELS=str(data["labels"]), JEPA_TOP="2", JEPA_SHOW="2",
               JEPA_ENCODER=HUB_ID, JEPA_EPOCHS=str(epochs), JEPA_RUN_NAME="ci-run",
               JEPA_BATCH_SIZE="8", JEPA_SEED="0", JEPA_LR="1e-3", CUDA_VISIBLE_DEVICES="",
               # one thread each: two executions run side by side below
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for key in ("JEPA_DATA_ROOT", "JEPA_REPO_DIR", "JEPA_REPO_URL", "JEPA_TEST_KILL_AT", "JEPA_MANIFEST",
                "JEPA_VAL_MANIFEST", "JEPA_SCORE_MANIFEST", "JEPA_HF_HOME", "HF_HOME", "HF_HUB_CACHE",
                "JEPA_GITHUB_TOKEN"):
        env.pop(key, None)  # the notebook's own choices: the repository is the folder it runs in
    log = open(work_dir.parent / f"{work_dir.name}-{epochs}.log", "w+")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
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


@pytest.fixture
def colab_data(tmp_path, demo_data):
    """The demo clips' frame folders (5 scenes x 24 frames) as a .tar.gz "on Drive", labels for the clips the
    notebook's frames manifest will cut from them, and the local folder it extracts them to."""
    archive = shutil.make_archive(str(tmp_path / "drive" / "frames"), "gztar", demo_data.parent, "frames")
    labels = tmp_path / "drive" / "labels.jsonl"
    labels.write_text("".join(json.dumps({"clip_id": f"scene_{s}__unknown__{c * 8:06d}",
                                          "binary_label": int(s in (2, 4) and c == 2)}) + "\n"
                              for s in range(5) for c in range(3)))
    return {"archive": archive, "labels": labels, "local": tmp_path / "local"}


def test_notebook_runs_and_resumes(tmp_path, tiny_encoder, colab_data):
    work = tmp_path / "work"
    run_dir = work / "ci-run"
    install_in_hf_cache(tiny_encoder, work / "hf-cache", HUB_ID)  # "downloaded" in an earlier session

    # first execution: extract the frames, build manifests, train 2 epochs, curves, evaluate, score, report
    out = finish(start(tmp_path, work, colab_data, epochs=2))
    assert "--resume" not in out and "Not running in Colab" in out
    assert f"HF_HOME = {work / 'hf-cache'}" in out and f"models cached there: {HUB_ID}" in out
    local = colab_data["local"]
    assert ((local / ".copied-from").read_text() == colab_data["archive"]
            and (local / "frames" / "scene_0").is_dir())
    built = [json.loads(line) for line in (local / "manifests" / "frames.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (local / "manifests" / "frames.val.jsonl").read_text().splitlines()]
    assert (len(built) == 15 and val and {r["split"] for r in val} == {"val"}
            and val == [r for r in built if r in val])
    assert epochs_of(run_dir) == [1, 2]
    for name in ("last.pt", "best.pt"):
        ckpt = jepa.load_checkpoint(run_dir / name)
        for key in ("model_state", "optimizer_state", "epoch", "config", "best_metric"):
            assert key in ckpt, f"{name}: {key}"
        assert ckpt["config"]["training"]["lr"] == 1e-3  # the settings reach train.py
        assert ckpt["encoder_name"] == HUB_ID
    assert jepa.load_checkpoint(run_dir / "last.pt")["epoch"] == 2
    plots = [p for p in (run_dir / "loss_curves.png", run_dir / "loss_curves.svg") if p.exists()]
    assert plots and plots[0].stat().st_size > 0, "no loss curve figure next to the checkpoints"
    if plots[0].suffix == ".svg":
        svg = ET.parse(plots[0]).getroot()  # well-formed, one line per curve (train and val)
        assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["num_clips"] == len(val) and -1 <= result["mean_cosine_similarity"] <= 1
    assert result["ranking"]["trained"]["num_labelled"] == len(val)  # LABELS reach eval.py
    assert '"mean_cosine_similarity"' in out  # the JSON is shown
    scores = [json.loads(line) for line in (run_dir / "scores-frames.val.jsonl").read_text().splitlines()]
    assert [r["clip_id"] for r in scores] == [r["clip_id"] for r in val] and all(r["score"] is not None
                                                                                 for r in scores)
    report = (run_dir / "report-frames.val.html").read_text().replace("<wbr>", "")
    best = min(scores, key=lambda r: (-r["score"], r["clip_id"]))  # report.py's order
    assert best["clip_id"] in report and f"full report: {run_dir / 'report-frames.val.html'}" in out
    assert re.search(rf"^\s+1\. {best['score']:.4f}  {re.escape(best['clip_id'])}  \(peak tubelet \d", out,
                     re.M)

    # executed again, in parallel on two copies of that state (they share nothing but the local data, as
    # sessions share /content/data's path; it saves ~25 s): the same EPOCHS (a re-run after the run finished)
    # and a larger one (a re-run after a disconnect)
    more = tmp_path / "work-more"
    shutil.copytree(work, more)
    metrics, last_mtime = (run_dir / "metrics.jsonl").read_text(), (run_dir / "last.pt").stat().st_mtime_ns
    best_sha = hashlib.sha256((run_dir / "best.pt").read_bytes()).hexdigest()
    same_run, more_run = start(tmp_path, work, colab_data, 2), start(tmp_path, more, colab_data, 3)
    out_same, out_more = finish(same_run), finish(more_run)

    for again in (out_same, out_more):
        assert "is already on the local disk" in again and "already built in this session" in again
    assert "--resume" in out_same and "resuming" in out_same
    assert not re.search(r'^\{"epoch": ', out_same, re.M), "an epoch was trained again"
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert (run_dir / "last.pt").stat().st_mtime_ns == last_mtime
    for step in ("eval.json", "scores-frames.val.jsonl", "report-frames.val.html"):
        assert f"{run_dir / step} is up to date" in out_same  # finished work is not done again

    assert "--resume" in out_more and "after epoch 2" in out_more
    assert re.findall(r'^\{"epoch": (\d+)', out_more, re.M) == ["3"]  # epoch 3 only: none trained twice
    assert epochs_of(more / "ci-run") == [1, 2, 3]
    assert jepa.load_checkpoint(more / "ci-run" / "last.pt")["epoch"] == 3
    assert "encoding 15 of 15" not in out_more  # the encoded features are reused
    changed = hashlib.sha256((more / "ci-run" / "best.pt").read_bytes()).hexdigest() != best_sha
    assert ("came from an earlier best.pt: scoring again" in out_more) == changed
    assert ("scores-frames.val.jsonl is up to date" in out_more) == (not changed)


def cell_namespace(monkeypatch, **names):
    """Run the helpers cell in a fresh namespace (from the repository root), then set `names` in it."""
    cells = {c["id"]: source(c) for c in load_notebook()["cells"]}
    monkeypatch.chdir(ROOT)
    ns = {}
    exec(cells["helpers"], ns)
    ns.update(names)
    return cells, ns


def test_colab_installs_only_what_is_missing_or_must_match(monkeypatch, tmp_path):
    """The code cell's Colab branch (simulated, nothing installed): Colab's torch/torchvision, numpy, pillow,
    pyyaml and tqdm are kept whatever their versions; missing packages (pytest, av) and a transformers other
    than the pin
    (checkpoint fingerprints depend on it) are installed at the tested pins."""
    calls = []
    colab = {"torch": "2.9.0+cu126", "torchvision": "0.24.0+cu126", "numpy": "2.0.2", "pillow": "11.3.0",
             "pyyaml": "6.0.2", "tqdm": "4.67.1", "transformers": "4.57.1"}  # pytest missing
    cells, ns = cell_namespace(monkeypatch, IN_COLAB=True, WORK_DIR=str(tmp_path),
                               run_live=lambda cmd, cwd=None, show=None: calls.append(cmd),
                               installed_version=lambda name: colab.get(name))
    exec(cells["code"], ns)
    assert ns["REPO_DIR"] == str(ROOT)  # the notebook's own checkout: no clone, no pull
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split() if "==" in line)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", f"transformers=={pins['transformers']}",
                      f"pytest=={pins['pytest']}", f"av=={pins['av']}"]]  # av: video input
    colab["transformers"], colab["pytest"] = pins["transformers"], "8.3.5"  # all there: nothing to install
    colab["av"] = "14.0.0"
    calls.clear()
    exec(cells["code"], ns)
    assert calls == []


def test_private_repository_token_is_sent_but_never_shown(monkeypatch, tmp_path, capsys):
    """Cloning with JEPA_GITHUB_TOKEN: git gets the token as a one-off HTTP header, the printed command and
    the clone's URL do not contain it."""
    calls = []
    monkeypatch.setenv("JEPA_GITHUB_TOKEN", "ghp_SECRET123")
    monkeypatch.setenv("JEPA_REPO_URL", "https://github.com/someone/jepa-clips.git")
    monkeypatch.delenv("JEPA_REPO_DIR", raising=False)
    cells, ns = cell_namespace(monkeypatch, IN_COLAB=False, WORK_DIR=str(tmp_path),
                               run_live=lambda cmd, cwd=None, show=None: calls.append((cmd, show)))
    monkeypatch.chdir(tmp_path)  # not a checkout: the cell clones into WORK_DIR/jepa-clips
    with pytest.raises(FileNotFoundError):  # the fake clone wrote nothing there, so the next step stops
        exec(cells["code"], ns)
    [(cmd, show)] = calls
    header = ("http.extraHeader=Authorization: Basic "
              + base64.b64encode(b"x-access-token:ghp_SECRET123").decode())
    assert cmd == ["git", "-c", header, "clone", "https://github.com/someone/jepa-clips.git",
                   str(tmp_path / "jepa-clips")]
    assert "SECRET" not in show and "<token>" in show and "SECRET" not in capsys.readouterr().out


def test_data_cell_extracts_or_copies_once(monkeypatch, tmp_path, capsys):
    """Step 6 outside the full run: a .zip and a folder on "Drive" land on the local disk, once."""
    src = tmp_path / "drive" / "frames" / "scene_a"
    src.mkdir(parents=True)
    (src / "f0.jpg").write_bytes(b"jpeg")
    archive = shutil.make_archive(str(tmp_path / "drive" / "frames"), "zip", tmp_path / "drive", "frames")
    for source in (archive, str(tmp_path / "drive" / "frames")):
        local = tmp_path / f"local-{Path(source).suffix or 'dir'}"
        cells, ns = cell_namespace(monkeypatch, DATA_SOURCE=source, LOCAL_DATA=str(local))
        exec(cells["data"], ns)
        assert "1 files" in capsys.readouterr().out
        found = local / "frames" / "scene_a" / "f0.jpg" if source == archive else local / "scene_a" / "f0.jpg"
        assert found.read_bytes() == b"jpeg"
        exec(cells["data"], ns)
        assert "is already on the local disk" in capsys.readouterr().out
    cells, ns = cell_namespace(monkeypatch, DATA_SOURCE=str(tmp_path / "nothing.tar"), LOCAL_DATA=str(local))
    with pytest.raises(FileNotFoundError, match="no such archive or folder"):
        exec(cells["data"], ns)


def test_manifest_cell_builds_video_manifests(monkeypatch, tmp_path):
    """Step 7 with DATA_KIND=videos (and FPS): manifest.py videos runs on the local copy; the val manifest
    holds the val clips, which point into the video files."""
    av = pytest.importorskip("av")
    import numpy as np
    local = tmp_path / "local"
    for scene in ("drive_a", "drive_b"):
        (local / "videos" / scene).mkdir(parents=True)
        c = av.open(str(local / "videos" / scene / "front.mp4"), "w")
        s = c.add_stream("libx264", rate=10)
        s.width, s.height = 32, 32
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 10, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        c.close()
    cells, ns = cell_namespace(monkeypatch, DATA_KIND="videos", LOCAL_DATA=str(local), DATA_SUBDIR="videos",
                               FRAMES=4, STRIDE=4, FPS="5", SEED=0, DATA_ROOT="", SCORE_MANIFEST="",
                               LABELS="", REPO_DIR=str(ROOT))
    exec(cells["manifests"], ns)
    rows = [json.loads(x) for x in Path(ns["MANIFEST"]).read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["video"] == "../videos/drive_a/front.mp4"
    assert rows[0]["frame_indices"] == [0, 2, 4, 6] and rows[0]["camera"] == "front"
    val = [json.loads(x) for x in Path(ns["VAL_MANIFEST"]).read_text().splitlines()]
    assert val and {r["split"] for r in val} == {"val"}


def test_learn_cell_runs_only_with_a_labels_file(monkeypatch, tmp_path, capsys):
    """Step 14: without a labels file it only says where to put one; with it, learn.py fit on the scores,
    then selection.py select --rank-by mix with the probe (which marks the labelled clips)."""
    calls = []
    names = dict(RUN_DIR=str(tmp_path), SCORES=str(tmp_path / "scores-fleet.jsonl"), TOP=20, DATA_ROOT="",
                 SCORE_MANIFEST=str(tmp_path / "fleet.jsonl"), REPO_DIR=str(ROOT),
                 run_live=lambda cmd, cwd=None, show=None: calls.append(cmd))
    monkeypatch.delenv("JEPA_REVIEW_LABELS", raising=False)
    cells, ns = cell_namespace(monkeypatch, **names)
    exec(cells["learn"], ns)
    assert calls == [] and "no labels file" in capsys.readouterr().out
    (tmp_path / "review_labels.jsonl").write_text('{"clip_id": "a", "binary_label": 1}\n')
    exec(cells["learn"], ns)
    fit, select = calls
    probe = str(tmp_path / "probe-fleet.jsonl")
    assert fit[1:] == [str(ROOT / "learn.py"), "fit", "--scores", names["SCORES"], "--labels",
                       str(tmp_path / "review_labels.jsonl"), "--output", probe]
    assert select[1:4] == [str(ROOT / "selection.py"), "select", "--scores"]
    assert select[select.index("--rank-by") + 1] == "mix" and select[select.index("--probe") + 1] == probe
    assert select[select.index("--output") + 1] == str(tmp_path / "round2-fleet.jsonl")
