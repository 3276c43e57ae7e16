"""Train the predictor head on frozen V-JEPA 2 features.

Usage:
  python train.py --manifest clips.jsonl [--run-dir experiments/run] [--encoder NAME_OR_DIR] [--lr 1e-3]
                  [--epochs 30] [--batch-size 8] [--seed 0] [--device auto] [--resume] [--set section.key=value]
  make train MANIFEST=clips.jsonl LR=1e-3 [RESUME=1]

Stage 1 encodes every train/val tubelet once clean and once masked and saves the pairs in chunks under
RUN/features/ (fingerprinted; a kill loses at most one chunk). Stage 2 trains the head on those pairs for
training.epochs, writing RUN/metrics.jsonl and last.pt / best.pt / epoch_NNN.pt. --resume continues either stage
exactly; --epochs is the total. --features reuses another run's features (same fingerprint) without re-encoding.
"""
import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

import jepa
from manifest import assign_splits, check_frames, manifest_fingerprint, read_manifest

# model.encoder_name may be spelled differently (hub id vs snapshot, relative vs absolute path): the features
# fingerprint holds the encoder's weights fingerprint, so another encoder is still refused when resuming
RESUMABLE_CHANGES = ("training.epochs", "data.num_workers", "training.encode_batch_size", "model.encoder_name")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML with the keys to change (defaults: the shipped config.yaml)")
    p.add_argument("--manifest", required=True, help="JSONL manifest of clips (train/val by its split field)")
    p.add_argument("--data-root", help="folder relative frame paths resolve against (default: the manifest's)")
    p.add_argument("--run-dir", default="experiments/run", help="run folder for features, checkpoints, metrics")
    p.add_argument("--encoder", help="V-JEPA 2 hub id or local snapshot folder (model.encoder_name)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (training.lr)")
    p.add_argument("--epochs", type=int, help="total epochs (training.epochs)")
    p.add_argument("--batch-size", type=int, help="head batch size (training.batch_size)")
    p.add_argument("--seed", type=int, help="seed for split, masks, init and shuffling")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from where it stopped")
    p.add_argument("--features", help="reuse the encoded features of another run folder (fingerprint-checked)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, repeatable")
    return p.parse_args(argv)


def resolve_config(args, run_dir):
    """The run's config: fresh from flags, or on --resume the saved one with only harmless changes allowed."""
    named = dict(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                 encoder=args.encoder, data_root=args.data_root)
    saved = run_dir / "config.yaml"
    if not args.resume:
        if saved.exists():
            raise jepa.UserError(f"{run_dir} already holds a run: pass --resume (RESUME=1) to continue it, "
                                 f"or choose another --run-dir (RUN=)")
        return jepa.load_config(args.config, args.set, **named)
    if not saved.exists():
        raise jepa.UserError(f"--resume: {run_dir} holds no run (no config.yaml); start it without --resume")
    cfg = jepa.load_config(saved, args.set, **named)
    changed = jepa.changed_keys(yaml.safe_load(saved.read_text()), cfg, RESUMABLE_CHANGES)
    if changed:
        raise jepa.UserError(f"--resume: {', '.join(f'{k} {a!r} -> {b!r}' for k, a, b in changed)} "
                             f"would change the run; start a new --run-dir (add --features {run_dir} to reuse "
                             f"its encoded features)")
    return cfg


def encode_features(encoder, records, cfg, feat_dir, fingerprint, workers):
    """Encode records' tubelets (clean + masked) into feat_dir/chunk_NNNNN.pt, skipping chunks already saved.

    Returns {clip_id: (clean_emb (N, D), masked_emb (N, D), mask_frac (N,))} read back from the chunks."""
    meta_path = feat_dir / "fingerprint.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["fingerprint"] != fingerprint:
            raise jepa.UserError(f"{feat_dir}: features were encoded with another encoder, manifest or data/mask "
                                 f"settings ({meta['fingerprint']} != {fingerprint}); use a new --run-dir")
    else:
        feat_dir.mkdir(parents=True, exist_ok=True)
        jepa.atomic_write_text(meta_path, json.dumps({"fingerprint": fingerprint, "clips": len(records)}))
    chunk = cfg["training"]["encode_chunk_clips"]
    done = len(sorted(feat_dir.glob("chunk_*.pt"))) * chunk
    todo = records[done:]
    if todo:
        print(f"encoding {len(todo)} of {len(records)} clips (clean + masked) into {feat_dir}", flush=True)
        dataset = jepa.JEPADataset(todo, cfg, encoder.processor)
        parts = []
        stream = jepa.encode_stream(encoder, dataset, cfg["training"]["encode_batch_size"], workers, chunk)
        for i, clean, masked, frac, error in tqdm(stream, total=len(todo), unit="clip", mininterval=2):
            if error:
                raise jepa.UserError(f"{error} (encoded chunks are kept: fix it and rerun with --resume)")
            parts.append((todo[i]["clip_id"], clean, masked, frac))
            if len(parts) == chunk or i == len(todo) - 1:
                n_chunk = (done + i) // chunk
                data = {"clip_ids": [p[0] for p in parts], "clean": torch.cat([p[1] for p in parts]),
                        "masked": torch.cat([p[2] for p in parts]), "mask_frac": torch.cat([p[3] for p in parts]),
                        "counts": [len(p[3]) for p in parts]}
                jepa.atomic_write(feat_dir / f"chunk_{n_chunk:05d}.pt", lambda f: torch.save(data, f))
                jepa.kill_point("encode_chunk", n_chunk)
                parts = []
    features = {}
    for path in sorted(feat_dir.glob("chunk_*.pt")):
        data = torch.load(path, weights_only=True)
        for cid, part in zip(data["clip_ids"], zip(*(t.split(data["counts"]) for t in
                                                      (data["clean"], data["masked"], data["mask_frac"])))):
            features[cid] = part
    return features


def stack(features, records):
    parts = [features[r["clip_id"]] for r in records]
    keys = ("clean", "masked", "mask_frac")
    return {k: torch.cat([p[j] for p in parts]) if parts else torch.empty(0) for j, k in enumerate(keys)}


def main(argv=None):
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    cfg = resolve_config(args, run_dir)
    device = jepa.resolve_device(args.device)
    records = read_manifest(args.manifest, cfg["data"]["root"], cfg["data"]["tubelet_size"])
    splits = assign_splits(records, cfg["seed"], cfg["data"]["val_fraction"], cfg["data"]["use_manifest_split"])
    train_recs = [r for r, s in zip(records, splits) if s == "train"]
    val_recs = [r for r, s in zip(records, splits) if s == "val"]
    if not train_recs:
        raise jepa.UserError(f"{args.manifest}: no clips to train on ({splits.count('test')} of {len(records)} "
                             f"are split=test, which is never trained on); use a manifest with train/val clips, "
                             f"or --set data.use_manifest_split=false to draw a seeded split instead")
    check_frames(train_recs + val_recs, args.manifest)
    encoder = jepa.VJEPAEncoder(cfg["model"]["encoder_name"], device)  # before the run folder: bad input leaves none
    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in run_dir.glob(".*.tmp*"):  # leftovers of a killed write; the real files are intact
        tmp.unlink()
    jepa.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    d, enc_recs = cfg["data"], train_recs + val_recs
    fingerprint = json.dumps([encoder.fingerprint, manifest_fingerprint(enc_recs), d["image_size"],
                              d["patch_size"], d["tubelet_size"], d["mask_ratio"], cfg["seed"]])
    fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    workers = jepa.num_workers(cfg, device)
    link = run_dir / "features_from.txt"  # remembers --features, so a --resume without it does not re-encode
    source = args.features or (link.read_text() if link.exists() else None)
    feat_dir = run_dir / "features"
    if source:  # another run's folder or its features/ folder
        feat_dir = (Path(source) / "features" if (Path(source) / "features").is_dir() else Path(source)).resolve()
        jepa.atomic_write_text(link, str(feat_dir))
    t0 = time.time()
    features = encode_features(encoder, enc_recs, cfg, feat_dir, fingerprint, workers)
    encode_s = time.time() - t0
    train_set = {k: v.to(device) for k, v in stack(features, train_recs).items()}
    val_set = {k: v.to(device) for k, v in stack(features, val_recs).items()}
    print(f"{len(train_set['clean'])} train / {len(val_set['clean'])} val tubelets "
          f"({len(train_recs)} / {len(val_recs)} clips); encoding took {encode_s:.1f}s", flush=True)
    encoder_fingerprint = encoder.fingerprint
    del encoder  # the encoder is not needed for training the head: free its memory

    t, m = cfg["training"], cfg["model"]
    torch.manual_seed(cfg["seed"])
    head = jepa.PredictorHead(features[train_recs[0]["clip_id"]][0].shape[1], m["predictor_hidden_dim"],
                              m["predictor_dropout"]).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=t["lr"])
    shuffle_gen = torch.Generator().manual_seed(cfg["seed"])
    start, best = 1, math.inf
    last = run_dir / "last.pt"
    if args.resume and last.exists():
        ckpt = jepa.load_checkpoint(last)
        head.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        jepa.set_rng_state(ckpt["rng"], shuffle_gen)
        start, best = ckpt["epoch"] + 1, ckpt["best_metric"]
        print(f"resuming {run_dir} after epoch {ckpt['epoch']}", flush=True)
    metrics_path = run_dir / "metrics.jsonl"
    kept = [ln for ln in (metrics_path.read_text().splitlines() if metrics_path.exists() else [])
            if ln.strip().endswith("}") and json.loads(ln)["epoch"] < start]  # drop epochs not checkpointed
    jepa.atomic_write_text(metrics_path, "".join(ln + "\n" for ln in kept))
    extra = {"encoder_name": cfg["model"]["encoder_name"], "encoder_fingerprint": encoder_fingerprint,
             "embed_dim": head.norm.normalized_shape[0], "features_fingerprint": fingerprint}
    for epoch in range(start, t["epochs"] + 1):
        t_epoch = time.time()
        try:
            train_loss = jepa.train_epoch(head, optimizer, train_set, t["batch_size"], shuffle_gen, epoch)
        except FloatingPointError as e:
            raise jepa.UserError(f"{e}; stopped. The last good checkpoint {last} is intact (try a lower --lr)", 1)
        val_loss = jepa.validate_epoch(head, val_set, t["batch_size"])
        metric = val_loss if val_loss is not None else train_loss  # no val clips: best by train loss
        improved = metric < best
        best = min(best, metric)
        line = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "best": improved,
                "lr": t["lr"], "time_s": round(time.time() - t_epoch, 3)}
        print(json.dumps(line), flush=True)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        save = dict(head=head, optimizer=optimizer, epoch=epoch, config=cfg, best_metric=best,
                    rng=jepa.rng_state(shuffle_gen), **extra)
        if improved:
            jepa.save_checkpoint(run_dir / "best.pt", **save)
        if epoch % t["checkpoint_every"] == 0:
            jepa.save_checkpoint(run_dir / f"epoch_{epoch:03d}.pt", **save)
        jepa.save_checkpoint(last, **save)  # last: the resume point is only ever a complete epoch
        jepa.kill_point("epoch_end", epoch)
    jepa.atomic_write_text(run_dir / "timing.json", json.dumps({"encode_s": encode_s, "total_s": time.time() - t0}))
    print(f"done: best {'val' if val_set['clean'].numel() else 'train'} loss {best:.6f}; checkpoints in {run_dir} "
          f"(best.pt, last.pt); total {time.time() - t0:.1f}s, encoding {encode_s:.1f}s", flush=True)


if __name__ == "__main__":
    jepa.run_cli(main)
