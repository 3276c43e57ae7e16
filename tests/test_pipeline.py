"""The research logic and the three commands, on a tiny V-JEPA 2 loaded through from_pretrained (CPU, no
network)."""
import json

import numpy as np
import pytest
import torch

import cli
import jepa
from manifest import assign_splits, read_manifest
import train
from conftest import REALDATA, run_script, write_jsonl


def cfg_with(**sets):
    return cli.load_config(None, [f"{k}={v}" for k, v in sets.items()])


# ---- masking ----

def test_mask_ratio_shape_and_fill():
    tub = np.full((2, 224, 224, 3), 200, np.uint8)
    masked, mask = jepa.mask_tubelet(tub, 0.75, 16, seed=123)
    assert mask.shape == (2, 14, 14) and mask.dtype == bool
    assert mask.sum() == round(0.75 * 2 * 14 * 14) == 294
    pix = mask.repeat(16, axis=1).repeat(16, axis=2)
    assert (masked[pix] == 0).all() and (masked[~pix] == 200).all()
    assert (tub == 200).all()  # the clean tubelet is not modified


def test_mask_deterministic_per_clip_and_tubelet():
    masker = jepa.MaskTubelet(0.75, 16, seed=0)
    tub = np.ones((2, 64, 64, 3), np.uint8)
    a = masker(tub, "clip_a", 0)[1]
    assert np.array_equal(a, masker(tub, "clip_a", 0)[1])
    assert not np.array_equal(a, masker(tub, "clip_b", 0)[1])
    assert not np.array_equal(a, masker(tub, "clip_a", 1)[1])
    assert not np.array_equal(a, jepa.MaskTubelet(0.75, 16, seed=1)(tub, "clip_a", 0)[1])
    assert jepa.tubelet_seed(0, "clip_a", 0) == 12892476158888680314  # stable across machines and runs


def test_dataset_tubelets_drop_remainder_and_mask_frac(demo_data):
    records = read_manifest(demo_data)
    rec = dict(records[0], frames=records[0]["frames"][:7])  # 7 frames -> 3 tubelets, one frame dropped
    item = jepa.JEPADataset([rec], cfg_with())[0]
    assert item.clean.shape == (3, 2, 3, 224, 224) and item.clean.dtype == torch.uint8
    assert torch.allclose(item.mask_frac, torch.full((3,), 294 / 392))
    assert (item.masked == 0).float().mean() >= 0.75 and item.is_last and item.start == 0


# ---- manifests ----

def test_both_manifest_styles_and_paths(tmp_path):
    frames = [f"f{i}.jpg" for i in range(4)]
    m = write_jsonl(tmp_path / "m.jsonl", [
        {"scene": "s1", "camera": "CAM_FRONT", "frames": frames, "timestamps": [0, 1, 2, 3]},
        {"clip_id": "c2", "split": "val", "scene_id": "s2", "camera": "CAM_BACK",
         "frame_paths": ["/abs/a.jpg"] * 2}])
    a, b = read_manifest(m)
    assert a["scene"] == "s1" and a["frames"][0] == str(tmp_path / "f0.jpg") and a["split"] is None
    assert a["clip_id"] == read_manifest(m)[0]["clip_id"] and a["clip_id"].startswith("s1__CAM_FRONT__")
    assert (b["clip_id"], b["scene"], b["camera"], b["split"], b["frames"]) == ("c2", "s2", "CAM_BACK", "val",
                                                                              ["/abs/a.jpg"] * 2)
    assert read_manifest(m, root="/data")[0]["frames"][0] == "/data/f0.jpg"


def test_seeded_split_by_scene_and_by_clip(demo_data):
    records = read_manifest(demo_data)  # 5 scenes: split by scene
    splits = assign_splits(records, seed=0)
    val_scenes = {r["scene"] for r, s in zip(records, splits) if s == "val"}
    assert len(val_scenes) == 1 and splits == assign_splits(records, seed=0)
    assert all(s == "val" for r, s in zip(records, splits) if r["scene"] in val_scenes)
    few = records[:6]  # 2 scenes: split by clip
    assert assign_splits(few, seed=0).count("val") == 1


# ---- model ----

def test_predictor_model_and_loss_shapes(tiny_encoder):
    encoder = jepa.VJEPAEncoder(str(tiny_encoder))
    assert encoder.embed_dim == 64 and not any(p.requires_grad for p in encoder.parameters())
    head = jepa.PredictorHead(64, hidden_dim=32, dropout=0.1)
    nn_parent = torch.nn.ModuleList([encoder, head]).train()  # as an optimizer's parent module might
    assert not encoder.model.training and nn_parent[1].training  # the frozen encoder stays in eval mode
    videos = torch.randint(0, 255, (3, 2, 3, 224, 224), dtype=torch.uint8)
    pix = encoder.process(videos)
    clean_emb = encoder(pix)
    pred_emb = head(encoder(pix * 0), torch.full((3,), 0.75))
    assert clean_emb.shape == pred_emb.shape == (3, 64)
    loss = jepa.jepa_loss(pred_emb, clean_emb)
    loss.backward()
    assert head.mlp[0].weight.grad is not None
    assert jepa.jepa_loss(clean_emb, clean_emb * 3).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    assert torch.allclose(jepa.compute_cosine_similarity(clean_emb, clean_emb), torch.ones(3))


def test_encoder_uses_vision_features_not_hf_predictor(tiny_encoder, monkeypatch):
    encoder = jepa.VJEPAEncoder(str(tiny_encoder))
    calls = []
    monkeypatch.setattr(encoder.model.predictor, "forward", lambda *a, **k: calls.append(1))
    encoder(encoder.process(torch.zeros(1, 2, 3, 224, 224, dtype=torch.uint8)))
    assert calls == []


def test_stream_batches_across_clips_in_order(tiny_encoder, demo_data):
    encoder = jepa.VJEPAEncoder(str(tiny_encoder))
    records = read_manifest(demo_data)[:5]
    ds = jepa.JEPADataset(records, cfg_with(), encoder.processor)
    batched = list(jepa.encode_stream(encoder, ds, batch_size=3, num_workers=1))
    assert [b.index for b in batched] == list(range(5))
    single = encoder(torch.cat([ds[2].clean, ds[2].masked]))
    assert torch.allclose(batched[2].clean_emb, single[:4], atol=1e-5)
    assert torch.allclose(batched[2].masked_emb, single[4:], atol=1e-5)


# ---- training ----

def train_run(run_dir, manifest, encoder, *extra):
    train.main(["--manifest", str(manifest), "--encoder", str(encoder), "--run-dir", str(run_dir),
                *map(str, extra)])
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_lowers_loss_and_is_reproducible(tmp_path, tiny_encoder, demo_data):
    a = train_run(tmp_path / "a", demo_data, tiny_encoder, "--epochs", 2)
    b = train_run(tmp_path / "b", demo_data, tiny_encoder, "--epochs", 2, "--features", tmp_path / "a")
    assert a[1]["train_loss"] < a[0]["train_loss"] and a[1]["val_loss"] < a[0]["val_loss"]
    for x, y in zip(a, b):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-6 and abs(x["val_loss"] - y["val_loss"]) < 1e-6
    ckpt = jepa.load_checkpoint(tmp_path / "a" / "last.pt")
    for key in ("model_state", "optimizer_state", "epoch", "config", "best_metric", "rng",
                "encoder_fingerprint"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["embed_dim"] == 64
    assert (tmp_path / "a" / "best.pt").exists() and (tmp_path / "a" / "config.yaml").exists()
    assert not (tmp_path / "b" / "features").exists()  # --features reused a's, nothing re-encoded
    train_run(tmp_path / "b", demo_data, tiny_encoder, "--epochs", 3, "--resume")  # remembers --features
    assert not (tmp_path / "b" / "features").exists()


def test_resume_equals_uninterrupted(tmp_path, tiny_encoder, demo_data):
    full = train_run(tmp_path / "full", demo_data, tiny_encoder, "--epochs", 4, "--set",
                     "training.checkpoint_every=2")
    train_run(tmp_path / "part", demo_data, tiny_encoder, "--epochs", 2, "--set",
              "training.checkpoint_every=2")
    part = train_run(tmp_path / "part", demo_data, tiny_encoder, "--epochs", 4, "--resume")
    assert [m["epoch"] for m in part] == [1, 2, 3, 4]
    assert ([(m["train_loss"], m["val_loss"]) for m in part]
            == [(m["train_loss"], m["val_loss"]) for m in full])
    w_full = jepa.load_checkpoint(tmp_path / "full" / "last.pt")["model_state"]
    w_part = jepa.load_checkpoint(tmp_path / "part" / "last.pt")["model_state"]
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    assert (tmp_path / "part" / "epoch_002.pt").exists() and (tmp_path / "part" / "epoch_004.pt").exists()


def test_lr_flag_reaches_optimizer(tmp_path, tiny_encoder, demo_data):
    train_run(tmp_path / "r", demo_data, tiny_encoder, "--epochs", 1, "--lr", "1e-3")
    ckpt = jepa.load_checkpoint(tmp_path / "r" / "last.pt")
    assert (ckpt["optimizer_state"]["param_groups"][0]["lr"] == 1e-3
            and ckpt["config"]["training"]["lr"] == 1e-3)


# ---- eval and infer ----

@pytest.fixture(scope="module")
def trained(reference):
    return reference / "best.pt"


def test_eval_json_schema_and_ranges(tmp_path, trained, tiny_encoder, demo_data):
    out = tmp_path / "eval.json"
    proc = run_script("eval.py", "--checkpoint", trained, "--manifest", demo_data, "--encoder", tiny_encoder,
                      "--output", out, "--labels", demo_data.parent / "labels.jsonl", check=True)
    res = json.loads(out.read_text())
    for key in ("mean_cosine_similarity", "std_cosine_similarity", "masked_cosine_similarity", "per_scene",
                "num_clips", "num_tubelets", "checkpoint", "encoder"):
        assert key in res
    assert -1 <= res["mean_cosine_similarity"] <= 1 and 0 <= res["std_cosine_similarity"] <= 2
    assert res["num_clips"] == 15 and res["num_tubelets"] == 60 and len(res["per_scene"]) == 5
    assert res["mean_cosine_similarity"] > res["masked_cosine_similarity"]  # the head beats no head
    rk = res["ranking"]
    methods = ("trained", "masked_gap", "random", "untrained_head", "knn_density")
    assert set(rk) == {*methods, "differences", "verdict", "bootstrap", "warnings"}
    for m in methods:  # the reference run keeps its features/ cache, so knn_density is available
        block = rk[m]
        assert block["num_labelled"] == 15 and block["num_positive"] == 2
        assert 0 < block["average_precision"] <= 1 and set(block["precision_at_k"]) == {"10", "50", "100"}
        assert 0 <= block["auroc"] <= 1 and len(block["ci"]["average_precision"]) == 2
    assert rk["trained"] != rk["random"] and rk["random"]["auroc"] == 0.5 and rk["knn_density"]["k"] == 5
    assert rk["untrained_head"]["average_precision"] != rk["trained"]["average_precision"]
    assert rk["bootstrap"] == {"resamples": 1000, "unit": "scene", "seed": 42}  # 5 scenes
    assert {d["verdict"] for d in rk["differences"].values()} == {"too few labels"}  # 2 positives
    for line in ("masked_gap", "untrained_head", "knn_density", "AUROC", rk["verdict"]):
        assert line in proc.stdout  # the comparison table and verdict are printed
    # the untrained head is deterministic: a second eval gives the same numbers
    run_script("eval.py", "--checkpoint", trained, "--manifest", demo_data, "--encoder", tiny_encoder,
               "--output", tmp_path / "again.json", "--labels", demo_data.parent / "labels.jsonl", check=True)
    again = json.loads((tmp_path / "again.json").read_text())["ranking"]
    assert again["untrained_head"] == rk["untrained_head"]


def test_infer_one_line_per_clip_in_order(scored, demo_data):
    rows = [json.loads(x) for x in scored.read_text().splitlines()]
    assert [r["clip_id"] for r in rows] == [r["clip_id"] for r in read_manifest(demo_data)]
    for r in rows:
        assert set(r) == {"clip_id", "scene", "camera", "first_frame", "score", "tubelet_scores",
                          "masked_gap"}
        assert (len(r["tubelet_scores"]) == 4
                and r["score"] == pytest.approx(np.mean(r["tubelet_scores"]), abs=2e-6))


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata not present")
def test_real_dashcam_frames_end_to_end(tmp_path, tiny_encoder):
    run = tmp_path / "run"  # every clip there is split=test: draw a seeded split instead
    train_run(run, REALDATA / "manifest.jsonl", tiny_encoder, "--epochs", 2, "--set",
              "data.use_manifest_split=false")
    out = tmp_path / "scores.jsonl"
    run_script("infer.py", "--checkpoint", run / "best.pt", "--manifest", REALDATA / "manifest.jsonl",
               "--encoder", tiny_encoder, "--output", out, check=True)
    scores = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(scores) == 6 and all(0 <= s["score"] <= 2 and len(s["tubelet_scores"]) == 8 for s in scores)


def test_training_refuses_an_all_test_manifest(tmp_path, tiny_encoder):
    m = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": "a", "split": "test", "frames": ["x.jpg", "y.jpg"]}])
    with pytest.raises(cli.UserError, match="no clips to train on.*data.use_manifest_split=false"):
        train.main(["--manifest", str(m), "--encoder", str(tiny_encoder), "--run-dir", str(tmp_path / "r")])
