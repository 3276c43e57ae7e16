"""Shared fixtures: a tiny random V-JEPA 2 saved with save_pretrained (loaded through the same from_pretrained
path as the real model) and small synthetic manifests. No network, CPU only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REALDATA = ROOT.parent / "shared" / "realdata"

import demo  # noqa: E402


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """Folder holding a tiny V-JEPA 2 (64-d, 2 layers) and its video processor."""
    return demo.make_tiny_encoder(tmp_path_factory.mktemp("tiny-vjepa2"))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """Synthetic clips: 5 scenes x 3 clips x 8 frames (4 tubelets each); returns the manifest path."""
    return demo.make_clips(tmp_path_factory.mktemp("demo-data"))


def run_script(script, *args, env=None, check=False):
    """Run an entry script as a user would; returns the CompletedProcess (text output)."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(path)


CHUNK = ["--set", "training.encode_chunk_clips=4", "--set", "training.checkpoint_every=2"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory, tiny_encoder, demo_data):
    """An uninterrupted 4-epoch run on the demo data (small feature chunks) to compare other runs against."""
    import train
    run_dir = tmp_path_factory.mktemp("ref")
    train.main(["--manifest", str(demo_data), "--encoder", str(tiny_encoder), "--run-dir", str(run_dir),
                "--epochs", "4", *CHUNK])
    return run_dir


@pytest.fixture(scope="session")
def scored(tmp_path_factory, reference, tiny_encoder, demo_data):
    """scores.jsonl of an uninterrupted infer.py run with the reference run's best.pt."""
    out = tmp_path_factory.mktemp("scored") / "scores.jsonl"
    run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data, "--encoder",
               tiny_encoder, "--output", out, check=True)
    return out


@pytest.fixture(scope="session")
def slurm_shards(tmp_path_factory, reference, tiny_encoder, demo_data):
    """The reference head's scores in 3 shards, made by docs/slurm_score.sbatch as a 3-task array
    (--array=1-3) runs it; returns (shard files in task order, the environment the tasks shared)."""
    out_dir = tmp_path_factory.mktemp("slurm")
    common = {"CKPT": str(reference / "best.pt"), "MANIFEST": str(demo_data), "OUT_DIR": str(out_dir),
              "ENCODER": str(tiny_encoder), "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": sys.executable}
    for task in (1, 2, 3):
        env = dict(os.environ, **common, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN="1",
                   SLURM_ARRAY_TASK_COUNT="3")
        proc = subprocess.run(["bash", "docs/slurm_score.sbatch"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
    return [out_dir / f"shard-{task}.jsonl" for task in (1, 2, 3)], common
