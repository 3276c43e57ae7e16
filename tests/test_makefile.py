"""Makefile: default outputs sit next to the checkpoint/scores they came from, and every target that runs a
script passes ARGS on to it. Checked with `make -n` (prints the commands without running them)."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

# the variables each script target cannot do without (its command refuses to print otherwise)
REQUIRED = {"manifest": ["FRAMES_DIR=drives"], "report": ["SCORES=runs/b/scores.jsonl"],
            "select": ["SCORES=runs/b/scores.jsonl"], "similar": ["SCORES=runs/b/scores.jsonl", "CLIP=c1"],
            "merge": ["SHARDS=a.jsonl b.jsonl", "OUT=s.jsonl"],
            "sample-for-labels": ["SCORES=runs/b/scores.jsonl"],
            "learn": ["SCORES=runs/b/scores.jsonl", "LABELS=a.jsonl b.jsonl"]}


def dry_run(*args):
    """The commands `make -n ARGS` would run, as one string; PYTHON=py so nothing is installed or looked
    up."""
    proc = subprocess.run(["make", "-n", "--no-print-directory", "PYTHON=py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\\\n", " ")


def script_targets():
    """Targets whose recipe runs a Python script ($(PYTHON) ...), read from the Makefile itself."""
    targets, current = [], None
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([a-z][a-z-]*):", line)
        if m:
            current = m.group(1)
        elif (line.startswith("\t") and "$(PYTHON) " in line and current not in targets
              and current != "install"):
            targets.append(current)
    return targets


def test_every_script_target_passes_args():
    targets = script_targets()
    assert {"demo", "manifest", "check", "train", "eval", "score", "merge", "report", "select", "similar",
            "test", "bench"} <= set(targets)
    for target in targets:
        out = dry_run(target, *REQUIRED.get(target, []), "ARGS=--zz-marker 7")
        assert "--zz-marker 7" in out, f"make {target} drops ARGS:\n{out}"


def test_report_passes_args_after_its_defaults():
    out = dry_run("report", "SCORES=runs/b/scores.jsonl", "ARGS=--bottom 2 --thumbs 3")
    assert re.search(r"report\.py .*--top 50 .*--bottom 2 --thumbs 3", out), out  # last flag wins in argparse


def test_eval_and_score_write_next_to_the_checkpoint():
    out = dry_run("eval", "CKPT=experiments/lr1e-3/best.pt", "MANIFEST=data/val.jsonl")
    assert "--output experiments/lr1e-3/eval.json" in out
    out = dry_run("score", "CKPT=experiments/lr1e-3/best.pt", "MANIFEST=data/fleet.jsonl")
    assert "--output experiments/lr1e-3/scores.jsonl" in out
    out = dry_run("eval", "RUN=experiments/other", "MANIFEST=m.jsonl")  # CKPT defaults to $RUN/best.pt
    assert "--checkpoint experiments/other/best.pt" in out and "--output experiments/other/eval.json" in out
    out = dry_run("score", "CKPT=best.pt", "MANIFEST=m.jsonl", "OUT=elsewhere/s.jsonl")  # OUT still wins
    assert "--output elsewhere/s.jsonl" in out


def test_resume_without_manifest_leaves_it_to_the_run():
    """RESUME=1 without MANIFEST=: train.py gets no --manifest and continues with the one the run recorded
    (the default data/manifest.jsonl would be another file); an explicit MANIFEST= is still passed."""
    assert "--manifest" not in dry_run("train", "RUN=experiments/lr1e-3", "RESUME=1")
    assert "--manifest data/t.jsonl" in dry_run("train", "RUN=experiments/lr1e-3", "RESUME=1",
                                                "MANIFEST=data/t.jsonl")
    assert "--manifest data/manifest.jsonl" in dry_run("train", "RUN=experiments/new")


def test_report_writes_next_to_the_scores():
    assert "--output runs/b/report.html" in dry_run("report", "SCORES=runs/b/scores.jsonl")
    assert "--output r.html" in dry_run("report", "SCORES=runs/b/scores.jsonl", "OUT=r.html")


def test_demo_takes_seed_and_epochs():
    assert "demo.py --seed 7 --epochs 3" in dry_run("demo", "SEED=7", "EPOCHS=3")


def test_help_fits_and_names_the_defaults():
    proc = subprocess.run(["make", "--no-print-directory", "help", "PYTHON=py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 110, max(lines, key=len)
    assert any("eval.json beside CKPT" in ln for ln in lines)
    assert any("scores.jsonl beside CKPT" in ln for ln in lines)
    assert any("report.html beside SCORES" in ln for ln in lines)


def test_select_similar_and_report_write_next_to_the_scores():
    for target, extra, name in (("select", [], "selection.jsonl"), ("similar", ["CLIP=c1"], "similar.jsonl"),
                                ("report", [], "report.html")):
        out = dry_run(target, "SCORES=runs/b/scores.jsonl", *extra)
        assert f"--output runs/b/{name}" in out, out


def test_manifest_from_videos():
    out = " ".join(dry_run("manifest", "VIDEOS_DIR=/data/videos", "FPS=4", "FRAMES=8", "OUT=m.jsonl").split())
    assert "manifest.py videos --videos-dir /data/videos --fps 4 --frames 8 --output m.jsonl" in out
    proc = subprocess.run(["make", "-n", "PYTHON=py", "manifest", "VIDEOS_DIR=v", "FRAMES_DIR=f"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "pass one of NUSCENES=" in proc.stdout + proc.stderr
