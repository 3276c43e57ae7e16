"""Train the predictor head on frozen V-JEPA 2 features.

Usage:
  python train.py --manifest clips.jsonl [--run-dir experiments/run] [--encoder NAME_OR_DIR] [--lr 1e-3]
                  [--epochs 30] [--batch-size 8] [--seed 42] [--device auto] [--resume]
                  [--set section.key=value]
  make train MANIFEST=clips.jsonl LR=1e-3 [RESUME=1]

Stages: (1) resolve the config and the train/val split; (2) encode every train/val tubelet once, clean and
masked, into feature chunks under RUN/features/ (fingerprinted; a kill loses at most one chunk), or reuse
them; (3) build the head, or restore it on --resume; (4) train for training.epochs, writing RUN/metrics.jsonl
and last.pt / best.pt / epoch_NNN.pt. --resume continues any stage exactly (--epochs is the total) and reads
the run's own manifest unless --manifest is given. --features reuses another run's features without
re-encoding (read-only: clips it lacks are encoded into this run's folder).
"""
import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

import cli
import jepa
from manifest import assign_splits, check_frames, manifest_fingerprint, read_manifest, split_warning

TRAIN_FLAGS = ["encoder", "data_root", "lr", "epochs", "batch_size", "seed"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with the keys to change (defaults: the shipped config.yaml)")
    p.add_argument("--manifest", help="JSONL manifest of clips (train/val by its split field); with "
                                      "--resume, default: the manifest the run started with")
    p.add_argument("--run-dir", default="experiments/run", help="run folder for features, checkpoints, "
                                                                "metrics (default: %(default)s)")
    cli.add_config_flags(p, TRAIN_FLAGS)
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from where it stopped")
    p.add_argument("--features", help="reuse the encoded features of another run folder "
                                      "(fingerprint-checked, never written to)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, repeatable")
    return p.parse_args(argv)


# ---- stage 1: config, manifest and split ----

class Splits(NamedTuple):
    train: list  # manifest records trained on
    val: list    # manifest records the best checkpoint is chosen by


class FeatureFolders(NamedTuple):
    own: Path            # this run's features/, where new chunks are written
    source: Path | None  # read-only features of another run (--features), or None


def resolve_config(args, run_dir):
    """The run's config: fresh from flags, or on --resume the saved one with only harmless changes allowed."""
    saved = run_dir / "config.yaml"
    if not args.resume:
        if saved.exists():
            raise cli.UserError(f"{run_dir} already holds a run: pass --resume (RESUME=1) to continue it, "
                                 f"or choose another --run-dir (RUN=)")
        return cli.load_config(args.config, args.set, **cli.config_flags(args))
    if not saved.exists():
        raise cli.UserError(f"--resume: {run_dir} holds no run (no config.yaml); start it without --resume")
    try:
        old = yaml.safe_load(saved.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict):
        raise cli.UserError(f"{saved}: not a run config; restore it or start a new --run-dir")
    cfg = cli.load_config(args.config, args.set, base=old, **cli.config_flags(args))
    cli.refuse_changes(old, cfg, "resume", "the run",
                        f"start a new --run-dir, adding --features {run_dir} to reuse its encoded features")
    return cfg


def resolve_manifest(args, run_dir):
    """The manifest to read: --manifest, or on --resume the one recorded in RUN/manifest.json (refused when
    the file changed since, as its features would no longer match)."""
    if args.manifest:
        return args.manifest
    record = run_dir / "manifest.json"
    if not args.resume:
        raise cli.UserError("--manifest is required (MANIFEST=path/to/clips.jsonl)")
    if not record.exists():
        raise cli.UserError(f"--resume: {run_dir} does not record its manifest; pass --manifest (MANIFEST=)")
    recorded = json.loads(record.read_text())
    path = recorded["path"]
    if not Path(path).is_file() or cli.file_sha256(path) != recorded["sha256"]:
        raise cli.UserError(f"{path}: the manifest of {run_dir} is gone or changed since the run started; "
                             "pass --manifest to say which file to use "
                             "(its clips must match the run's features)")
    return path


def load_splits(manifest, cfg):
    """Read and validate the manifest and split it; every frame is checked before anything is encoded."""
    records = read_manifest(manifest, cfg["data"]["root"], cfg["data"]["tubelet_size"])
    splits = assign_splits(records, cfg["seed"], cfg["data"]["val_fraction"],
                           cfg["data"]["use_manifest_split"])
    result = Splits([r for r, s in zip(records, splits) if s == "train"],
                    [r for r, s in zip(records, splits) if s == "val"])
    if not result.train:
        raise cli.UserError(f"{manifest}: no clips to train on ({splits.count('test')} of {len(records)} "
                             "are split=test, which is never trained on); use a manifest with train/val "
                             "clips, or --set data.use_manifest_split=false to draw a seeded split instead")
    check_frames(result.train + result.val, manifest)
    warning = split_warning(len(result.train), len(result.val), len({r["scene"] for r in records}))
    if warning:
        print(warning)
    return result


def snapshot_run(run_dir, cfg, manifest):
    """Snapshot the config and the manifest's identity in the run folder."""
    for tmp in run_dir.glob(".*.tmp*"):  # leftovers of a killed write; the real files are intact
        tmp.unlink()
    cli.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    record = {"path": str(Path(manifest).resolve()), "sha256": cli.file_sha256(manifest)}
    cli.atomic_write_text(run_dir / "manifest.json", json.dumps(record, indent=1) + "\n")


# ---- stage 2: features ----

def encode_stage(args, cfg, splits, encoder, device, run_dir):
    """Stage 2: the train and val TubeletFeatures on `device`, and what checkpoints record about them."""
    clips = splits.train + splits.val
    fingerprint = features_fingerprint(encoder, clips, cfg)
    features = load_or_encode_features(encoder, clips, cfg, feature_folders(args, run_dir), fingerprint,
                                       jepa.num_workers(cfg, device))
    write_training_clip_embeddings(run_dir, [features[r["clip_id"]] for r in splits.train], fingerprint)
    train_set = jepa.TubeletFeatures.cat([features[r["clip_id"]] for r in splits.train]).to(device)
    val_set = jepa.TubeletFeatures.cat([features[r["clip_id"]] for r in splits.val]).to(device)
    identity = {"encoder_name": cfg["model"]["encoder_name"],
                "encoder_path": jepa.encoder_path(cfg["model"]["encoder_name"]),
                "encoder_fingerprint": encoder.fingerprint,
                "embed_dim": encoder.embed_dim, "features_fingerprint": fingerprint}
    return train_set, val_set, identity


def write_training_clip_embeddings(run_dir, train_features, fingerprint):
    """RUN/train_clip_emb.npy: (n_train, D) float32, one row per training clip, the mean of its clean tubelet
    embeddings (jepa.clip_embedding, the vector infer.py writes to OUT.emb.npy), for eval.py's knn_density
    baseline, which reads it a slice at a time; RUN/train_clip_emb.json ties it to the features it came
    from."""
    emb = np.stack([jepa.clip_embedding(f.clean_emb).numpy() for f in train_features])
    cli.atomic_write(run_dir / "train_clip_emb.npy", lambda f: np.save(f, emb))
    cli.atomic_write_text(run_dir / "train_clip_emb.json",
                          json.dumps({"features_fingerprint": fingerprint, "rows": len(emb)}) + "\n")


def features_fingerprint(encoder, clips, cfg):
    """What the encoded features depend on: the encoder's weights, the clips and the data/mask settings."""
    d = cfg["data"]
    parts = [encoder.fingerprint, manifest_fingerprint(clips), d["image_size"], d["patch_size"],
             d["tubelet_size"], d["mask_ratio"], cfg["seed"]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


FEATURES_LINK = "features_from.txt"  # in a run folder: the --features folder it reads (for --resume)


def features_dir(folder):
    """The features folder of a run folder (its features/), or `folder` itself when it is one."""
    return Path(folder) / "features" if (Path(folder) / "features").is_dir() else Path(folder)


def linked_features(run_dir):
    """The read-only features folder RUN/features_from.txt names (--features given once), or None."""
    link = run_dir / FEATURES_LINK
    return features_dir(link.read_text().strip()) if link.exists() else None


def feature_folders(args, run_dir):
    """FeatureFolders of the run. --features is remembered in the run folder, so a --resume without it does
    not re-encode."""
    source = features_dir(args.features) if args.features else linked_features(run_dir)
    if not source:
        return FeatureFolders(run_dir / "features", None)
    source = source.resolve()
    if source == (run_dir / "features").resolve():
        return FeatureFolders(run_dir / "features", None)
    if not (source / "fingerprint.json").is_file():
        raise cli.UserError(f"--features {args.features or source}: not a run folder with encoded features "
                             f"(no features/fingerprint.json)")
    cli.atomic_write_text(run_dir / FEATURES_LINK, str(source))
    return FeatureFolders(run_dir / "features", source)


def read_fingerprint(feat_dir):
    path = feat_dir / "fingerprint.json"
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise cli.UserError(f"{path}: unreadable or corrupt; delete {feat_dir} to encode its features again")


def iter_chunks(feat_dir):
    """Yield (clip_id, TubeletFeatures) of every chunk in a features folder, one chunk in memory at a time
    (on the CPU); a corrupt chunk is a UserError naming it. The one reader of the chunk format (eval.py's
    knn_density fallback reads through it too)."""
    for path in sorted(feat_dir.glob("chunk_*.pt")):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            columns = [data[k].split(data["counts"]) for k in ("clean", "masked", "mask_frac")]
            pairs = list(zip(data["clip_ids"], map(jepa.TubeletFeatures._make, zip(*columns))))
        except Exception as e:  # torn, foreign or hand-edited file: any failure means the same
            raise cli.UserError(f"{path}: corrupt feature chunk ({type(e).__name__}); delete it and rerun "
                                 "with --resume to encode just that part again")
        yield from pairs


def read_chunks(feat_dir):
    """{clip_id: TubeletFeatures} of every chunk in a features folder; a corrupt chunk is named."""
    return dict(iter_chunks(feat_dir))


def load_or_encode_features(encoder, clips, cfg, folders, fingerprint, workers):
    """{clip_id: TubeletFeatures} for `clips`: read from the feature chunks of this run (and the read-only
    --features source), encoding only the clips no chunk holds into this run's folder, encode_chunk_clips
    clips per chunk. Encoder batches never straddle chunks, so a resumed encoding is bit-identical."""
    own, source = folders.own, folders.source
    for folder in filter(None, (source, own if (own / "fingerprint.json").exists() else None)):
        if read_fingerprint(folder) != fingerprint:
            raise cli.UserError(f"{folder}: features were encoded with another encoder, manifest or "
                                 f"data/mask settings; use a new --run-dir (without --features {folder})")
    features = {**(read_chunks(source) if source else {}), **(read_chunks(own) if own.is_dir() else {})}
    todo = [c for c in clips if c["clip_id"] not in features]
    if todo:  # this run's own folder, created only when there is something to encode
        own.mkdir(parents=True, exist_ok=True)
        cli.atomic_write_text(own / "fingerprint.json", json.dumps({"fingerprint": fingerprint,
                                                                     "clips": len(clips)}))
        print(f"encoding {len(todo)} of {len(clips)} clips (clean + masked) into {own}", flush=True)
        features.update(encode_chunks(encoder, todo, cfg, own, workers))
    return features


def encode_chunks(encoder, clips, cfg, feat_dir, workers):
    """Encode clips into new chunk files in feat_dir, atomically, one chunk per encode_chunk_clips clips."""
    per_chunk = cfg["training"]["encode_chunk_clips"]
    first = len(list(feat_dir.glob("chunk_*.pt")))
    dataset = jepa.JEPADataset(clips, cfg, encoder.processor)
    stream = jepa.encode_stream(encoder, dataset, cfg["training"]["encode_batch_size"], workers, per_chunk)
    features, ids = {}, []
    for clip in tqdm(stream, total=len(clips), unit="clip", mininterval=2):
        if clip.error:
            raise cli.UserError(f"{clip.error} (encoded chunks are kept: fix it and rerun with --resume)")
        ids.append(clips[clip.index]["clip_id"])
        features[ids[-1]] = jepa.TubeletFeatures(clip.clean_emb, clip.masked_emb, clip.mask_frac)
        if len(ids) == per_chunk or clip.index == len(clips) - 1:
            number = first + clip.index // per_chunk
            rows = jepa.TubeletFeatures.cat([features[c] for c in ids])
            data = {"clip_ids": ids, "clean": rows.clean_emb, "masked": rows.masked_emb,
                    "mask_frac": rows.mask_frac, "counts": [len(features[c].mask_frac) for c in ids]}
            cli.atomic_write(feat_dir / f"chunk_{number:05d}.pt", lambda f: torch.save(data, f))
            # test hook: no-op unless JEPA_TEST_KILL_AT is set
            cli.kill_hook_for_tests("encode_chunk", number)
            ids = []
    return features


# ---- stage 3: the head ----

class TrainState(NamedTuple):
    head: jepa.PredictorHead
    optimizer: torch.optim.Optimizer
    shuffle_gen: torch.Generator
    start_epoch: int
    best: float


def build_or_resume_head(cfg, embed_dim, device, last, resume):
    """A fresh seeded head and AdamW, or on --resume the ones in last.pt with every RNG state restored."""
    torch.manual_seed(cfg["seed"])
    m = cfg["model"]
    head = jepa.PredictorHead(embed_dim, m["predictor_hidden_dim"], m["predictor_dropout"]).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg["training"]["lr"])
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"])
    if not (resume and last.exists()):
        return TrainState(head, optimizer, shuffle_gen, 1, math.inf)
    fix = "restore it from epoch_NNN.pt (cp epoch_NNN.pt last.pt) or start a new --run-dir"
    try:
        ckpt = jepa.load_checkpoint(last)
    except cli.UserError as e:  # torn (a full disk, a copy cut short) or not a checkpoint
        raise cli.UserError(f"{str(e).split('; ')[0]}; to resume, {fix}")
    best = ckpt.get("best_metric")
    if not isinstance(best, float) or math.isnan(best) or ckpt["epoch"] < 1:
        raise cli.UserError(f"{last}: cannot resume from it (epoch {ckpt['epoch']!r}, best_metric {best!r}: "
                             f"not as train.py writes them); {fix}")
    try:
        head.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        jepa.set_rng_state(ckpt["rng"], shuffle_gen)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise cli.UserError(f"{last}: cannot resume from it ({type(e).__name__}); {fix}")
    state = [head.state_dict(), *(v for s in optimizer.state.values() for v in s.values())]
    tensors = [t for item in state for t in (item.values() if isinstance(item, dict) else [item])
               if isinstance(t, torch.Tensor)]
    if not all(torch.isfinite(t).all() for t in tensors):  # train.py stops before saving a NaN
        raise cli.UserError(f"{last}: its weights or optimizer state hold NaN or infinity; {fix}")
    print(f"resuming {last.parent} after epoch {ckpt['epoch']}", flush=True)
    return TrainState(head, optimizer, shuffle_gen, ckpt["epoch"] + 1, ckpt["best_metric"])


def keep_checkpointed_epochs(metrics_path, start_epoch):
    """Drop metrics lines of epochs after the last checkpoint (they are trained again) and a torn last
    line."""
    lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
    kept = [ln for ln in lines if ln.strip().endswith("}") and json.loads(ln)["epoch"] < start_epoch]
    cli.atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))


# ---- stage 4: epochs ----

def train_epochs(state, cfg, train_set, val_set, run_dir, identity):
    """Train up to training.epochs, one JSON line per epoch in metrics.jsonl; last.pt after every epoch (the
    resume point is only ever a complete epoch), best.pt when the val loss improves, epoch_NNN.pt
    periodically. Returns the best metric."""
    t = cfg["training"]
    last, metrics_path, best = run_dir / "last.pt", run_dir / "metrics.jsonl", state.best
    keep_checkpointed_epochs(metrics_path, state.start_epoch)
    for epoch in range(state.start_epoch, t["epochs"] + 1):
        t_epoch = time.time()
        try:
            train_loss = jepa.train_epoch(state.head, state.optimizer, train_set, t["batch_size"],
                                          state.shuffle_gen, epoch)
        except FloatingPointError as e:
            raise cli.UserError(f"{e}; stopped. The last good checkpoint {last} is intact (try a lower --lr)",
                                1)
        val_loss = jepa.validate_epoch(state.head, val_set, t["batch_size"])
        metric = val_loss if val_loss is not None else train_loss  # no val clips: best by train loss
        improved, best = metric < best, min(best, metric)
        line = json.dumps({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "best": improved,
                           "lr": t["lr"], "time_s": round(time.time() - t_epoch, 3)})
        print(line, flush=True)
        try:
            with open(metrics_path, "a") as f:
                f.write(line + "\n")
        except OSError as e:  # a full disk: a torn line is dropped on --resume
            raise cli.UserError(f"cannot write {metrics_path}: {e.strerror or e}; free space, then continue "
                                 f"with --resume (finished epochs are kept)")
        save = dict(head=state.head, optimizer=state.optimizer, epoch=epoch, config=cfg, best_metric=best,
                    rng=jepa.rng_state(state.shuffle_gen), **identity)
        if improved:
            jepa.save_checkpoint(run_dir / "best.pt", **save)
        if epoch % t["checkpoint_every"] == 0:
            jepa.save_checkpoint(run_dir / f"epoch_{epoch:03d}.pt", **save)
        jepa.save_checkpoint(last, **save)
        cli.kill_hook_for_tests("epoch_end", epoch)  # test hook: no-op unless JEPA_TEST_KILL_AT is set
    return best


def main(argv=None):
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise cli.UserError(f"--run-dir {run_dir}: is a file, not a folder; choose another RUN=")
    cfg = resolve_config(args, run_dir)
    manifest = resolve_manifest(args, run_dir)
    splits = load_splits(manifest, cfg)
    device = jepa.resolve_device(args.device)
    # before the run folder: bad input leaves none
    encoder = jepa.VJEPAEncoder(cfg["model"]["encoder_name"], device)
    run_dir.mkdir(parents=True, exist_ok=True)
    with cli.exclusive_lock(run_dir / ".lock", f"run folder {run_dir}"):  # one writer per run folder
        snapshot_run(run_dir, cfg, manifest)
        t0 = time.time()
        train_set, val_set, identity = encode_stage(args, cfg, splits, encoder, device, run_dir)
        encode_s = time.time() - t0
        del encoder  # training the head does not need it: free its memory
        print(f"{len(train_set.clean_emb)} train / {len(val_set.clean_emb)} val tubelets "
              f"({len(splits.train)} / {len(splits.val)} clips); encoding took {encode_s:.1f}s", flush=True)
        state = build_or_resume_head(cfg, identity["embed_dim"], device, run_dir / "last.pt", args.resume)
        best = train_epochs(state, cfg, train_set, val_set, run_dir, identity)
        cli.atomic_write_text(run_dir / "timing.json", json.dumps({"encode_s": encode_s,
                                                                    "total_s": time.time() - t0}))
    print(f"done: best {'val' if len(val_set.clean_emb) else 'train'} loss {best:.6f}; checkpoints in "
          f"{run_dir} (best.pt, last.pt); total {time.time() - t0:.1f}s, encoding {encode_s:.1f}s",
          flush=True)


if __name__ == "__main__":
    cli.run_cli(main, on_interrupt="finished epochs and feature chunks are kept; continue with --resume "
                                    "(RESUME=1)")
