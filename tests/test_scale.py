"""Sharded scoring and merge: N machines give the same file as one."""
import json
import shutil
from pathlib import Path

import numpy as np

from conftest import run_script


def test_shards_merge_byte_identical_to_single_run(tmp_path, demo_data, scored, slurm_shards):
    shards = []
    for i, made in enumerate(slurm_shards[0]):  # shard i/3 of the reference run (conftest: the Slurm example)
        out = tmp_path / f"shard{i}.jsonl"
        for suffix in ("", ".meta.json", ".emb.npy"):
            shutil.copy(f"{made}{suffix}", f"{out}{suffix}")
        assert json.loads(Path(f"{out}.meta.json").read_text())["shard"] == f"{i}/3"
        assert len(out.read_text().splitlines()) == 5
        shards.append(out)
    # position 1
    assert json.loads(shards[1].read_text().splitlines()[0])["clip_id"] == "scene_0__CAM_FRONT__001"
    merged = tmp_path / "merged.jsonl"
    run_script("infer.py", "--merge", *shards, "--manifest", demo_data, "--output", merged, check=True)
    assert merged.read_bytes() == scored.read_bytes()
    assert ((tmp_path / "merged.jsonl.emb.npy").read_bytes()
            == (scored.parent / "scores.jsonl.emb.npy").read_bytes())
    assert ((tmp_path / "merged.jsonl.meta.json").read_text()
            == (scored.parent / "scores.jsonl.meta.json").read_text())

    proc = run_script("infer.py", "--merge", *shards[:2], "--manifest", demo_data, "--output", merged)
    assert proc.returncode == 2 and "clip 'scene_0__CAM_FRONT__002' (line 3) is in no shard" in proc.stderr
    for suffix in ("", ".meta.json", ".emb.npy"):
        shutil.copy(f"{shards[0]}{suffix}", f"{tmp_path / 'dup.jsonl'}{suffix}")
    proc = run_script("infer.py", "--merge", *shards, tmp_path / "dup.jsonl", "--manifest", demo_data,
                      "--output", merged)
    assert proc.returncode == 2 and "dup.jsonl:1: clip 'scene_0__CAM_FRONT__000' is also in" in proc.stderr
    assert merged.read_bytes() == scored.read_bytes()  # a refused merge leaves the earlier output alone


def test_bad_shard_spec(tmp_path, reference, demo_data):
    proc = run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data, "--output",
                      tmp_path / "o.jsonl", "--shard", "3/3")
    assert proc.returncode == 2 and "--shard 3/3: expected I/N with 0 <= I < N" in proc.stderr


def test_merge_names_a_corrupt_shard_line(tmp_path, demo_data):
    import pytest
    import infer
    import cli
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"clip_id": "scene_0__CAM_FRONT__000"}\nnot json\n')
    (tmp_path / "bad.jsonl.meta.json").write_text('{"embed_dim": 4}')
    np.save(tmp_path / "bad.jsonl.emb.npy", np.zeros((2, 4), dtype="<f4"))
    with pytest.raises(cli.UserError, match=r"bad.jsonl:2: not JSON"):
        infer.main(["--merge", str(bad), "--manifest", str(demo_data), "--output", str(tmp_path / "m.jsonl")])
    assert not (tmp_path / "m.jsonl").exists()
