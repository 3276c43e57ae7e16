"""Score every clip of a manifest for novelty (1 - cos(predicted, clean), mean or max over its tubelets).

Usage:
  python infer.py --checkpoint best.pt --manifest fleet.jsonl --output scores.jsonl [--shard I/N] [--overwrite]
  python infer.py --merge shard0.jsonl shard1.jsonl ... --manifest fleet.jsonl --output scores.jsonl
  make score CKPT=best.pt MANIFEST=fleet.jsonl OUT=scores.jsonl [SHARD=I/N]

Writes exactly one JSON line per manifest clip (of the shard), in manifest order, flushed as it goes:
{"clip_id", "scene", "camera", "first_frame", "score", "tubelet_scores"}; a clip whose frames cannot be read gets
"score": null and an "error" and the run goes on (exit status 1 at the end). Run the same command again after a
kill and it keeps the complete lines, drops a torn last line and appends the rest. OUT.meta.json records the
checkpoint and manifest the lines came from; a mismatching rerun is refused (--overwrite starts over).
"""
import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

import jepa
from manifest import manifest_fingerprint, read_manifest

IDENTITY = ("checkpoint_sha256", "manifest_fingerprint", "encoder_fingerprint", "shard", "aggregate")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jepa.add_scoring_args(p, checkpoint_required=False)
    p.add_argument("--shard", help="I/N: score only clips at positions I, I+N, I+2N, ... (0 <= I < N)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing output file and start over")
    p.add_argument("--merge", nargs="+", metavar="SHARD_FILE", help="join shard outputs into manifest order")
    args = p.parse_args(argv)
    if not args.merge and not args.checkpoint:
        p.error("--checkpoint is required (unless --merge)")
    return args


def parse_shard(text):
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise jepa.UserError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. --shard 0/4")
    return i, n


def result_line(rec, tubelet_novelty=None, aggregate="mean", error=None):
    row = {"clip_id": rec["clip_id"], "scene": rec["scene"], "camera": rec["camera"], "first_frame": rec["frames"][0],
           "score": None if error else jepa.clip_score(tubelet_novelty, aggregate),
           "tubelet_scores": [] if error else [round(x, jepa.SCORE_DECIMALS) for x in tubelet_novelty]}
    if error:
        row["error"] = error
    return json.dumps(row) + "\n"


def parse_row(line):
    """A scores line as a dict, or {} when it is not a JSON object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return row if isinstance(row, dict) else {}


def kept_lines(out, meta_path, meta, records):
    """Complete lines of an earlier run of the same command (torn last line dropped), or refuse a mismatch."""
    if not out.exists():
        return []
    if not meta_path.exists():
        raise jepa.UserError(f"{out} exists without {meta_path.name}, so its origin is unknown; pass --overwrite "
                             f"to replace it or choose another --output")
    old = json.loads(meta_path.read_text())
    diff = [k for k in IDENTITY if old.get(k) != meta[k]]
    if diff:
        raise jepa.UserError(f"{out} was written with another {', '.join(diff)} ({old.get('checkpoint')}, "
                             f"{old.get('manifest')}); pass --overwrite to start over or choose another --output")
    text = out.read_bytes().decode("utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # torn by a kill mid-write: scored again below
    for k, line in enumerate(lines):
        if k >= len(records) or parse_row(line).get("clip_id") != records[k]["clip_id"]:
            raise jepa.UserError(f"{out}:{k + 1}: does not match the manifest's clip order; pass --overwrite")
    return lines


def score(args):
    out, meta_path = Path(args.output), Path(args.output + ".meta.json")
    jepa.check_output_writable(out)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    ckpt, cfg, encoder, head, workers = jepa.load_for_scoring(args)
    records = read_manifest(args.manifest, cfg["data"]["root"], cfg["data"]["tubelet_size"])
    records = records[shard[0]::shard[1]]
    ev = cfg["evaluation"]
    meta = {"checkpoint": str(args.checkpoint), "encoder": cfg["model"]["encoder_name"],
            "manifest": str(args.manifest), "shard": args.shard, "aggregate": ev["aggregate"],
            "tubelet_size": cfg["data"]["tubelet_size"],
            "checkpoint_sha256": hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest(),
            "manifest_fingerprint": manifest_fingerprint(records), "encoder_fingerprint": encoder.fingerprint}
    lines = [] if args.overwrite else kept_lines(out, meta_path, meta, records)
    jepa.atomic_write_text(meta_path, json.dumps({k: meta[k] for k in sorted(meta) if k != "shard" or args.shard},
                                                 indent=1) + "\n")
    jepa.atomic_write_text(out, "".join(lines))  # the kept lines only (a torn tail is cut)
    failed = sum("error" in parse_row(ln) for ln in lines)
    todo = records[len(lines):]
    if lines:
        print(f"resuming {out}: {len(lines)} clips already scored, {len(todo)} to go", file=sys.stderr)
    dataset = jepa.JEPADataset(todo, cfg, encoder.processor)
    stream = jepa.encode_stream(encoder, dataset, ev["batch_size"], workers)
    t0, synced = time.time(), time.time()
    try:
        with open(out, "a") as f:
            for i, clean_emb, masked_emb, mask_frac, error in tqdm(stream, total=len(todo), unit="clip",
                                                                   mininterval=2, file=sys.stderr):
                if error:
                    f.write(result_line(todo[i], error=error))
                    failed += 1
                else:
                    cos_pred, _ = jepa.tubelet_cosines(head, clean_emb, masked_emb, mask_frac)
                    f.write(result_line(todo[i], (1 - cos_pred).tolist(), ev["aggregate"]))
                f.flush()  # a kill loses at most the line being written
                if time.time() - synced > 10:
                    os.fsync(f.fileno())
                    synced = time.time()
                jepa.kill_point("infer_line", len(lines) + i + 1)
            os.fsync(f.fileno())
    except OSError as e:
        raise jepa.UserError(f"cannot write {out}: {e.strerror or e}; free space, then rerun the same command "
                             f"(complete lines are kept)")
    print(f"scored {len(records) - failed} clips, {failed} failed, in {time.time() - t0:.1f}s -> {out}",
          file=sys.stderr)
    return 1 if failed else 0


def merge(args):
    """Join shard files into manifest order; refuse a missing, duplicated or unknown clip."""
    records = read_manifest(args.manifest)
    by_id, metas = {}, []
    for path in args.merge:
        if not Path(path).is_file():
            raise jepa.UserError(f"{path}: shard file not found")
        for n, line in enumerate(Path(path).read_text().splitlines(keepends=True), 1):
            if not line.endswith("\n"):
                raise jepa.UserError(f"{path}:{n}: torn last line; rerun that shard's command to finish it")
            cid = parse_row(line).get("clip_id")
            if cid is None:
                raise jepa.UserError(f"{path}:{n}: not a scores line (a JSON object with a clip_id)")
            if cid in by_id:
                raise jepa.UserError(f"{path}:{n}: clip {cid!r} is also in {by_id[cid][0]}")
            by_id[cid] = (path, line)
        meta_path = Path(path + ".meta.json")
        metas.append(json.loads(meta_path.read_text()) if meta_path.exists() else {})
    unknown = set(by_id) - {r["clip_id"] for r in records}
    missing = [r["clip_id"] for r in records if r["clip_id"] not in by_id]
    if unknown or missing:
        raise jepa.UserError(f"shards do not cover {args.manifest} exactly: {len(missing)} clip(s) missing "
                             f"{missing[:3]}, {len(unknown)} not in the manifest {sorted(unknown)[:3]}")
    if len({m.get("checkpoint_sha256") for m in metas}) > 1:
        raise jepa.UserError("shards were scored with different checkpoints; rescore them with one")
    jepa.atomic_write_text(args.output, "".join(by_id[r["clip_id"]][1] for r in records))
    if metas and metas[0]:
        meta = {k: v for k, v in metas[0].items() if k != "shard"}
        meta["manifest_fingerprint"] = manifest_fingerprint(records)
        jepa.atomic_write_text(args.output + ".meta.json", json.dumps(dict(sorted(meta.items())), indent=1) + "\n")
    failed = sum("error" in parse_row(line) for _, line in by_id.values())
    print(f"merged {len(args.merge)} shards, {len(records)} clips ({failed} failed) -> {args.output}", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(argv)
    return merge(args) if args.merge else score(args)


if __name__ == "__main__":
    jepa.run_cli(main)
