"""README.md: its shell examples run as written (the fast ones here; `make walk-readme` runs them all), every
example is either run or skipped with a reason, and the numbers it states are the measured ones."""
import re

import torch
import yaml

import jepa
import readme_examples as walker
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_example_runs_or_has_a_reason():
    steps = walker.plan(README)
    assert len(steps) >= 10
    for number, cmd, run, reason in steps:
        assert run or reason, f"README:{number}: {cmd}"
        if run:
            for literal in ("/data/", "/models/"):
                run = run.replace(literal, "")  # stand-ins replace those paths
            left = walker.PLACEHOLDER.search(run.replace("../shared", ""))
            assert not left, (f"README:{number}: placeholder {left.group(0)!r} in {cmd!r}: "
                              "extend SUBSTITUTIONS")
    ran = [cmd for _, cmd, run, _ in steps if run]
    assert any(c.startswith("make demo") for c in ran) and any(c.startswith("make report") for c in ran)


def test_walker_reads_blocks_continuations_and_comments():
    text = ("Intro\n\n    make a X=1 \\\n        Y=2   # comment\n"
            "    # a comment line\n    make b S=\"#x\"\n\n"
            "- a list item\n    continued text, not code\n\n    {\"json\": 1}\n\n```python\nmake c\n```\n\n"
            "```sh\n$ make d\n```\n\n    #SBATCH --array=0-1\n    make e I=$SLURM_ARRAY_TASK_ID\n")
    assert [c for _, c in walker.commands(text)] == ["make a X=1 Y=2", 'make b S="#x"', "make d",
                                                      "#SBATCH --array=0-1", "make e I=$SLURM_ARRAY_TASK_ID"]


def test_fast_examples_run_as_written():
    """The README's examples that need no encoder (manifest building and checking) on their stand-ins."""
    lines = []
    results = walker.walk(fast=True, log=lines.append)
    ran = [(number, cmd) for number, cmd, status in results if status == "ok"]
    failed = [r for r in results if r[2].startswith("FAIL")]
    assert not failed, "\n".join(lines)
    assert (any("make manifest NUSCENES=" in cmd for _, cmd in ran)
            and any("make check" in cmd for _, cmd in ran))
    assert any("make manifest FRAMES_DIR=" in cmd for _, cmd in ran)


def test_checkpoint_size_is_the_measured_one(tmp_path):
    """README and notebook state a ViT-L checkpoint's size: a 1024-d head with AdamW state, saved as train.py
    does."""
    head = jepa.PredictorHead(1024, 1024, 0.1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)
    x = torch.randn(4, 1024)
    jepa.jepa_loss(head(x, torch.rand(4)), x).backward()
    optimizer.step()  # AdamW's state exists after the first step
    path = tmp_path / "vitl.pt"
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    jepa.save_checkpoint(path, head, optimizer, 1, config, 0.1, rng=jepa.rng_state(torch.Generator()),
                         encoder_name="facebook/vjepa2-vitl-fpc64-256", encoder_fingerprint="0" * 16,
                         embed_dim=1024, features_fingerprint="0" * 16)
    size_mb = path.stat().st_size / 1e6
    stated = re.search(r"checkpoint is \*\*(\d+) MB\*\* \(([\d.]+) MiB", README)
    assert stated and round(size_mb) == int(stated.group(1)), (size_mb, stated)
    assert abs(path.stat().st_size / 2**20 - float(stated.group(2))) < 0.1
    notebook = (ROOT / "colab_train.ipynb").read_text(encoding="utf-8")
    assert f"{int(stated.group(1))} MB for the ViT-L encoder" in notebook and "tens of MB" not in notebook
    assert "a few MB" not in README
