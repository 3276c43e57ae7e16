"""Nothing lost, nothing trusted blindly: kills at any point, bad input, unsafe checkpoints."""
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import jepa
from manifest import check_frames, read_manifest
import train
from conftest import ROOT, run_script, write_jsonl

from conftest import CHUNK


def weights(path):
    return jepa.load_checkpoint(path)["model_state"]


def metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kill_at", ["encode_chunk:1", "epoch_end:2", "atomic_write:epoch_002.pt"])
def test_train_killed_then_resumed_equals_uninterrupted(tmp_path, tiny_encoder, demo_data, reference,
                                                        kill_at):
    args = ["--manifest", demo_data, "--encoder", tiny_encoder, "--run-dir", tmp_path, "--epochs", 4, *CHUNK]
    killed = run_script("train.py", *args, env={"JEPA_TEST_KILL_AT": kill_at})
    assert killed.returncode == -9
    if kill_at.startswith("encode"):
        assert len(list((tmp_path / "features").glob("chunk_*.pt"))) == 2  # chunks 0 and 1 kept
    else:  # whatever the moment of the kill, last.pt is a complete, loadable epoch
        assert (jepa.load_checkpoint(tmp_path / "last.pt")["epoch"]
                == (2 if kill_at.startswith("epoch") else 1))
    assert not (tmp_path / "epoch_002.pt").exists() or kill_at.startswith("epoch")
    train.main([*map(str, args), "--resume"])
    assert metrics(tmp_path) == [dict(m, time_s=n["time_s"])
                                 for m, n in zip(metrics(reference), metrics(tmp_path))]
    ref_w, got_w = weights(reference / "last.pt"), weights(tmp_path / "last.pt")
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)  # bit-identical
    assert not list(tmp_path.glob(".*.tmp*"))


def test_resume_refuses_changed_settings_and_fingerprint(tmp_path, tiny_encoder, demo_data, reference):
    shutil.copytree(reference, tmp_path / "r")
    base = ["--manifest", str(demo_data), "--encoder", str(tiny_encoder), "--run-dir", str(tmp_path / "r")]
    with pytest.raises(cli.UserError, match="already holds a run"):
        train.main(base)
    with pytest.raises(cli.UserError, match=r"training.lr 0.0001 -> 0.001 would change the run"):
        train.main([*base, "--resume", "--lr", "1e-3"])
    with pytest.raises(cli.UserError, match="features were encoded with another"):
        train.main([*base[:4], "--run-dir", str(tmp_path / "new"), "--features", str(tmp_path / "r"),
                    "--set", "data.mask_ratio=0.5"])


def test_nan_loss_stops_with_epoch_and_batch(tmp_path, tiny_encoder, demo_data, monkeypatch):
    real = jepa.train_epoch

    def nan_at_epoch_2(head, opt, feats, bs, gen, epoch):
        if epoch == 2:
            feats = feats._replace(masked_emb=feats.masked_emb * float("nan"))
        return real(head, opt, feats, bs, gen, epoch)

    monkeypatch.setattr(jepa, "train_epoch", nan_at_epoch_2)
    with pytest.raises(cli.UserError, match=r"loss became nan at epoch 2, batch 0.*last.pt is intact"):
        train.main(["--manifest", str(demo_data), "--encoder", str(tiny_encoder), "--run-dir", str(tmp_path),
                    "--epochs", "3"])
    assert jepa.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_train_epoch_raises_on_nonfinite_loss():
    head = jepa.PredictorHead(4, 8, 0.0)
    feats = jepa.TubeletFeatures(torch.ones(3, 4), torch.full((3, 4), float("inf")), torch.zeros(3))
    with pytest.raises(FloatingPointError, match="epoch 7, batch 0"):
        jepa.train_epoch(head, torch.optim.AdamW(head.parameters()), feats, 2, torch.Generator(), 7)


# ---- scoring survives kills ----

@pytest.mark.parametrize("kill_line", [1, 9])
def test_infer_killed_then_rerun_is_byte_identical(tmp_path, reference, tiny_encoder, demo_data, scored,
                                                   kill_line):
    out = tmp_path / "scores.jsonl"
    args = ["--checkpoint", reference / "best.pt", "--manifest", demo_data, "--encoder", tiny_encoder,
            "--output", out]
    assert run_script("infer.py", *args,
                      env={"JEPA_TEST_KILL_AT": f"infer_line:{kill_line}"}).returncode == -9
    assert len(out.read_text().splitlines()) == kill_line
    with open(out, "a") as f:
        f.write('{"clip_id": "scene_0__CAM_')  # a line torn by the kill
    emb = Path(f"{out}.emb.npy")
    with open(emb, "ab") as f:
        f.write(b"\0" * 300)  # and the embedding row after it: one row more than lines, then a torn one
    assert emb.stat().st_size > 128 + kill_line * 4 * 64
    run_script("infer.py", *args, check=True)
    assert out.read_bytes() == scored.read_bytes()
    assert emb.read_bytes() == Path(f"{scored}.emb.npy").read_bytes()
    rows = np.load(emb, mmap_mode="r")  # the documented one-line load: rows == lines, aligned
    assert rows.shape == (15, 64) and rows.dtype == np.float32 and np.isfinite(rows).all()


def test_infer_refuses_other_checkpoint_and_overwrite_starts_over(tmp_path, reference, tiny_encoder,
                                                                  demo_data, scored):
    out = tmp_path / "scores.jsonl"
    shutil.copy(scored, out)
    shutil.copy(str(scored) + ".meta.json", str(out) + ".meta.json")
    args = ["--manifest", demo_data, "--encoder", tiny_encoder, "--output", out]
    proc = run_script("infer.py", "--checkpoint", reference / "epoch_002.pt", *args)
    assert proc.returncode == 2 and "was written with another checkpoint_sha256" in proc.stderr
    run_script("infer.py", "--checkpoint", reference / "epoch_002.pt", *args, "--overwrite", check=True)
    assert out.read_bytes() != scored.read_bytes() and len(out.read_text().splitlines()) == 15


def test_infer_bad_clip_gets_error_line_and_exit_1(tmp_path, reference, tiny_encoder, demo_data):
    rows = [json.loads(x) for x in demo_data.read_text().splitlines()][:3]
    rows[1]["frame_paths"] = [str(demo_data.parent / p) for p in rows[1]["frame_paths"]]
    # truncated JPEG
    (tmp_path / "broken.jpg").write_bytes(Path(rows[1]["frame_paths"][0]).read_bytes()[:300])
    rows[1]["frame_paths"][3] = str(tmp_path / "broken.jpg")
    rows[2]["frame_paths"] = [str(demo_data.parent / p) for p in rows[2]["frame_paths"]]
    rows[0]["frame_paths"] = [str(demo_data.parent / p) for p in rows[0]["frame_paths"]]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    out = tmp_path / "scores.jsonl"
    proc = run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", manifest, "--encoder",
                      tiny_encoder, "--output", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert proc.returncode == 1 and "scored 2 clips, 1 failed" in proc.stderr
    assert lines[1]["score"] is None and "broken.jpg" in lines[1]["error"] and lines[2]["score"] is not None
    rows = np.load(f"{out}.emb.npy")
    assert rows.shape == (3, 64) and np.isnan(rows[1]).all() and np.isfinite(rows[[0, 2]]).all()


# ---- bad input: one line per problem, exit 2, no traceback ----

def test_manifest_problems_are_all_listed_with_lines(tmp_path):
    jpg = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32)).save(jpg)
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"clip_id": "a", "frames": ["a.jpg", "a.jpg"]}\n'
                  b'not json\n'
                  b'{"clip_id": "b"}\n'
                  b'{"clip_id": "c", "frames": ["a.jpg"]}\n'
                  b'{"clip_id": "a", "frames": ["a.jpg", "a.jpg"]}\n'
                  b'{"clip_id": "\xff\xfe"}\n')
    with pytest.raises(cli.UserError) as e:
        read_manifest(m)
    assert str(e.value).splitlines() == [
        f"{m}:2: not JSON (Expecting value at column 1)",
        f"{m}:3: no frames (need a non-empty list of paths in 'frame_paths' or 'frames')",
        f"{m}:4: 1 frame(s), fewer than one tubelet (2)",
        f"{m}:5: duplicate clip_id 'a' (first on line 1)",
        f"{m}:6: not UTF-8 text (re-save the manifest as UTF-8)"]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(cli.UserError, match="empty manifest"):
        read_manifest(tmp_path / "empty.jsonl")


def test_unusable_frames_are_named(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    Image.new("RGB", (300, 200), "red").save(tmp_path / "ok.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    m = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": "a", "frames": ["ok.jpg", "missing.jpg", "zero.jpg"]},
                                           {"clip_id": "b", "frames": ["text.jpg", "trunc.jpg"]}])
    with pytest.raises(cli.UserError) as e:
        check_frames(read_manifest(m), m, decode=True)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{m}:1: frame {tmp_path / 'missing.jpg'}: file not found"
    assert lines[1] == f"{m}:1: frame {tmp_path / 'zero.jpg'}: zero-byte file"
    assert lines[2].startswith(f"{m}:2: frame {tmp_path / 'text.jpg'}: not a readable image")
    assert (lines[3].startswith(f"{m}:2: frame {tmp_path / 'trunc.jpg'}: not a readable image")
            and len(lines) == 4)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "1"])
def test_odd_image_modes_and_small_images_just_work(tmp_path, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new(mode, (40, 30)).save(path)
    frame = jepa.load_frame(path, 224)
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("sets, message", [
    (["data.mask_ratoi=0.5"], "unknown config key 'data.mask_ratoi'. Valid keys: data.image_size"),
    (["training.epochs=ten"], "--set training.epochs: training.epochs must be int, got 'ten'"),
    (["data.mask_ratio=1.5"], "config key data.mask_ratio = 1.5 must be in [0, 1]"),
    (["training.lr=0"], "config key training.lr = 0.0 must be > 0"),
    (["data.image_size=225"],
     "config key data.image_size = 225 must be a positive multiple of data.patch_size"),
    (["training.epochs=0"], "config key training.epochs = 0 must be >= 1"),
    (["evaluation.aggregate=median"], "must be one of mean, max"),
    (["nokey"], "expected section.key=value"),
    (["seed=-1"], "config key seed = -1 must be in [0, 2**63)"),
    (["data.num_workers=-1"], "config key data.num_workers = -1 must be >= 0 or null"),
    (["evaluation.k_values=[5, 0]"], "config key evaluation.k_values = [5, 0] must all be >= 1"),
    (["selection.max_similarity=1.5"], "config key selection.max_similarity = 1.5 must be in [-1, 1]"),
    (["selection.per_scene=-1"], "config key selection.per_scene = -1 must be >= 0 (0 = no limit)"),
])
def test_config_errors_name_the_key(sets, message):
    with pytest.raises(cli.UserError) as e:
        cli.load_config(None, sets)
    assert message in str(e.value)


def test_config_accepts_yaml_exponent_text_and_partial_file(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  lr: 1e-3\n")  # YAML reads 1e-3 as text
    cfg = cli.load_config(tmp_path / "c.yaml")
    assert cfg["training"]["lr"] == 1e-3 and cfg["training"]["epochs"] == 30
    (tmp_path / "bad.yaml").write_text("trainig:\n  lr: 0.1\n")
    with pytest.raises(cli.UserError, match=r"bad.yaml: unknown config key 'trainig.lr'"):
        cli.load_config(tmp_path / "bad.yaml")


def test_cli_errors_are_one_line_without_traceback(tmp_path, tiny_encoder, demo_data):
    cases = [
        (["train.py", "--manifest", tmp_path / "nope.jsonl"],
         f"error: {tmp_path / 'nope.jsonl'}: manifest not found"),
        (["train.py", "--manifest", demo_data, "--set", "training.lrr=1"],
         "error: --set training.lrr: unknown config"),
        (["train.py", "--manifest", demo_data, "--encoder", tmp_path], "has no config.json"),
        (["train.py", "--manifest", demo_data, "--encoder", tmp_path / "missing"],
         "no such folder and not a hub id"),
    ]
    for args, message in cases:
        proc = run_script(*args, "--run-dir", tmp_path / "run")
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "run").exists()  # a refused run leaves nothing that blocks the corrected rerun


def test_encoder_that_is_not_vjepa2_and_offline_hub_id(tmp_path, monkeypatch):
    from transformers import BertConfig
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(cli.UserError, match="is a 'bert' model, not V-JEPA 2"):
        jepa.VJEPAEncoder(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(cli.UserError, match="hub is unreachable; download a snapshot.*ENCODER=DIR"):
        jepa.VJEPAEncoder("facebook/vjepa2-vitl-fpc64-256")


def test_checkpoint_for_another_encoder_is_refused(tmp_path, reference, demo_data):
    import demo
    other = demo.make_tiny_encoder(tmp_path / "other", seed=1)  # same size, other weights
    proc = run_script("eval.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data, "--encoder",
                      other, "--output", tmp_path / "e.json")
    assert (proc.returncode == 2 and "has fingerprint" in proc.stderr
            and "pass the training encoder" in proc.stderr)
    ckpt = jepa.load_checkpoint(reference / "best.pt")
    ckpt["embed_dim"] = 1024
    enc = jepa.VJEPAEncoder(str(other))
    with pytest.raises(cli.UserError, match="head expects 1024-d embeddings but encoder"):
        jepa.check_encoder_matches(ckpt, enc, "x.pt")


def test_unwritable_output_and_full_disk(tmp_path, reference, tiny_encoder, demo_data, monkeypatch):
    if os.geteuid() == 0:  # root ignores permissions: use a path under a file instead
        blocked = tmp_path / "file" / "out.json"
        (tmp_path / "file").write_text("")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        blocked = tmp_path / "ro" / "out.json"
    proc = run_script("eval.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data, "--encoder",
                      tiny_encoder, "--output", blocked)
    assert proc.returncode == 2 and "is not writable" in proc.stderr and "Traceback" not in proc.stderr

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous good checkpoint")
    with pytest.raises(cli.UserError, match="cannot write .*last.pt: No space left on device"):
        cli.atomic_write(target, lambda f: torch.save({}, f))
    assert target.read_bytes() == b"previous good checkpoint" and not list(tmp_path.glob(".*tmp*"))


# ---- trust ----

class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['JEPA_PWNED'])}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("JEPA_PWNED", str(marker))
    bad = tmp_path / "evil.pt"
    torch.save({"model_state": RunsCode()}, bad, pickle_protocol=2)
    with pytest.raises(cli.UserError, match=r"not a jepa-clips checkpoint \(or one that would run "
                       r"code\); refusing to load it"):
        jepa.load_checkpoint(bad)
    assert not marker.exists()
    with open(bad, "wb") as f:
        pickle.dump(RunsCode(), f)
    with pytest.raises(cli.UserError, match="refusing to load"):
        jepa.load_checkpoint(bad)
    assert not marker.exists()


def test_no_remote_code_no_unsafe_yaml_no_shell():
    for path in ROOT.glob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text and "yaml.load(" not in text, path
        assert "shell=True" not in text and "os.system" not in text, path


def test_resume_accepts_same_encoder_spelled_differently_refuses_another(tmp_path, tiny_encoder, demo_data,
                                                                        reference):
    import demo
    shutil.copytree(reference, tmp_path / "r")
    copy = shutil.copytree(tiny_encoder, tmp_path / "same-weights")  # another path, same weights
    base = ["--manifest", str(demo_data), "--run-dir", str(tmp_path / "r"), "--resume"]
    train.main([*base, "--encoder", str(copy), "--epochs", "5"])
    assert jepa.load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 5
    other = demo.make_tiny_encoder(tmp_path / "other", seed=1)
    with pytest.raises(cli.UserError, match="features were encoded with another encoder"):
        train.main([*base, "--encoder", str(other), "--epochs", "6"])
