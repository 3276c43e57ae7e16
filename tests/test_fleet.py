"""Fleet-size manifests: streaming validation, shards that keep only their own clips, --shard auto on Slurm
and Kubernetes arrays (the shipped examples, run as a 3-task array would run them), streaming merge
refusals."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import cli
import infer
from conftest import ROOT, write_jsonl
from manifest import parse_manifest, scan_manifest


def test_streaming_validation_lists_the_same_problems(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"clip_id": "a", "frames": ["x.jpg", "y.jpg"]}\nnot json\n[1]\n{"frames": []}\n'
                 '{"clip_id": "b", "frames": ["x.jpg"]}\n{"clip_id": "a", "frames": ["x.jpg", "y.jpg"]}\n'
                 '{"clip_id": "c", "split": "dev", "frames": ["x.jpg", "y.jpg"]}\n')
    _, problems = parse_manifest(m)
    with pytest.raises(cli.UserError) as e:
        scan_manifest(m)
    assert str(e.value).splitlines() == problems and len(problems) == 6
    assert f"{m}:6: duplicate clip_id 'a' (first on line 1)" in problems


def test_a_shard_keeps_only_its_own_clips(demo_data):
    whole = scan_manifest(demo_data)
    shard = scan_manifest(demo_data, shard=(1, 3))
    assert len(whole) == 15 and len(shard) == 5
    assert [shard[k]["clip_id"] for k in range(5)] == [whole[k]["clip_id"] for k in range(1, 15, 3)]
    kept = [shard.offsets, shard.lines, shard.frame_counts, shard.id_hashes]
    assert all(isinstance(a, np.ndarray) and a.nbytes == 5 * 8 for a in kept)  # 32 bytes a clip, nothing else
    assert shard.fingerprint != whole.fingerprint and scan_manifest(demo_data, shard=(1, 3)).fingerprint == \
        shard.fingerprint


@pytest.mark.parametrize("env, shard", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3)),
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "8",
      "SLURM_ARRAY_TASK_STEP": "2"}, (3, 5)),
    ({"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "3"}, (2, 3)),
])
def test_shard_auto_reads_array_environments(env, shard):
    assert infer.parse_shard("auto", env) == shard


@pytest.mark.parametrize("env, message", [
    ({}, "not inside a Slurm job array (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job"),
    ({"JOB_COMPLETION_INDEX": "0"}, "JOB_COMPLETIONS is not; set it to the Job's spec.completions"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, "incomplete or not numbers"),
    ({"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETIONS": "3"}, "--shard 3/3: expected I/N with 0 <= I < N"),
])
def test_shard_auto_errors_are_one_line(env, message):
    with pytest.raises(cli.UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        infer.parse_shard("auto", env)


def run_example(command, env):
    full = dict(os.environ, **{"PYTHON": sys.executable, **env})
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=600)


def test_cluster_examples_as_a_3_task_array_merge_to_the_single_run(tmp_path, demo_data, scored,
                                                                    slurm_shards):
    shards, common = slurm_shards  # conftest ran docs/slurm_score.sbatch as tasks 1-3 of an array
    assert [len(s.read_text().splitlines()) for s in shards] == [5, 5, 5]
    merged = tmp_path / "all.jsonl"
    assert infer.main(["--merge", *map(str, shards), "--manifest", str(demo_data), "--output",
                       str(merged)]) == 0
    assert merged.read_bytes() == scored.read_bytes()
    assert ((tmp_path / "all.jsonl.emb.npy").read_bytes()
            == (scored.parent / "scores.jsonl.emb.npy").read_bytes())

    score_job, merge_job = yaml.safe_load_all((ROOT / "docs" / "k8s_score_job.yaml").read_text())
    spec = score_job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert spec["completionMode"] == "Indexed" and env["JOB_COMPLETIONS"] == str(spec["completions"])
    k8s = dict(common, OUT_DIR=str(tmp_path / "k8s"), JOB_COMPLETION_INDEX="1", JOB_COMPLETIONS="3")
    os.makedirs(k8s["OUT_DIR"])
    assert container["command"] == ["bash", "-c"]
    proc = run_example(container["args"][0], k8s)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k8s" / "shard-1.jsonl").read_bytes() == shards[1].read_bytes()
    merge_args = merge_job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    proc = run_example(merge_args, dict(common, OUT_DIR=str(shards[0].parent)))
    assert proc.returncode == 0 and (shards[0].parent / "all.jsonl").read_bytes() == scored.read_bytes()


def fake_shard(path, clip_ids, sha="a", tail=""):
    path.write_text("".join(json.dumps({"clip_id": c, "score": 0.5}) + "\n" for c in clip_ids) + tail)
    np.save(f"{path}.emb.npy", np.zeros((len(clip_ids), 4), dtype="<f4"))
    (path.parent / f"{path.name}.meta.json").write_text(json.dumps({"embed_dim": 4,
                                                                    "checkpoint_sha256": sha}))
    return str(path)


def test_streaming_merge_refusals(tmp_path):
    m = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": c, "frames": ["f.jpg", "f.jpg"]} for c in "abcd"])
    out = str(tmp_path / "out.jsonl")
    cases = [  # (shard contents, second shard's tail, its checkpoint, expected refusal)
        ("ac", "bd", '{"clip_id": "e"', "a", r"1:3: torn last line; rerun that shard's command"),
        ("ac", "bd", "", "b", "shards were scored with different checkpoints"),
        ("ac", "bdx", "", "a", r"1:3: clip 'x' is not in .*m.jsonl"),
        ("ca", "bd", "", "a", r"clip 'a' \(line 1\) is in no shard, or not where manifest order puts it"),
    ]
    for first, second, tail, sha, message in cases:
        shards = [fake_shard(tmp_path / "0", first), fake_shard(tmp_path / "1", second, sha, tail)]
        with pytest.raises(cli.UserError, match=message):
            infer.main(["--merge", *shards, "--manifest", str(m), "--output", out])
        assert not os.path.exists(out)
    assert infer.main(["--merge", fake_shard(tmp_path / "0", "ac"), fake_shard(tmp_path / "1", "bd"),
                       "--manifest", str(m), "--output", out]) == 0
    assert [json.loads(x)["clip_id"] for x in open(out)] == list("abcd")
    assert np.load(f"{out}.emb.npy", mmap_mode="r").shape == (4, 4)
