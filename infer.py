"""Score every clip of a manifest for novelty (1 - cos(predicted, clean), mean or max over its tubelets).

Usage:
  python infer.py --checkpoint best.pt --manifest fleet.jsonl --output scores.jsonl [--shard I/N|auto]
                  [--overwrite]
  python infer.py --merge shard0.jsonl shard1.jsonl ... --manifest fleet.jsonl --output scores.jsonl
  make score CKPT=best.pt MANIFEST=fleet.jsonl OUT=scores.jsonl [SHARD=I/N|auto]

Writes exactly one JSON line per manifest clip (of the shard), in manifest order, flushed as it goes:
{"clip_id", "scene", "camera", "first_frame", "score", "tubelet_scores", "masked_gap"} (masked_gap: the
no-predictor baseline's score, 1 - cos(masked, clean)); a clip whose frames cannot be read gets "score": null
and an "error" and the run goes on (exit status 1 at the end). Beside it, OUT.emb.npy holds
one float32 embedding per line (the mean of the clip's clean tubelet embeddings; NaN for a failed clip),
loadable without reading it whole: np.load("OUT.emb.npy", mmap_mode="r"). Run the same command again after a
kill and it keeps the complete lines and rows, drops a torn tail and appends the rest. OUT.meta.json records
the checkpoint and manifest the lines came from; a mismatching rerun is refused (--overwrite starts over).
The manifest is validated whole but kept as byte offsets (a 1M-clip manifest costs ~32 MB), and a shard keeps
only its own clips. --shard auto reads the shard from a Slurm job array or a Kubernetes Indexed Job.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import cli
import scorefile
from scorefile import emb_header
from manifest import id_hash, scan_manifest

IDENTITY = ("checkpoint_sha256", "manifest_fingerprint", "frames_base", "encoder_fingerprint", "shard",
            "aggregate", "embed_dim")
SYNC_EVERY_S = 10  # fsync the output this often: a machine crash loses at most this much work


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_scoring_args(p, checkpoint_required=False)
    p.add_argument("--shard", help="I/N: score only clips at positions I, I+N, I+2N, ... (0 <= I < N); auto: "
                                   "I and N from a Slurm job array or a Kubernetes Indexed Job")
    p.add_argument("--overwrite", action="store_true", help="discard an existing output file and start over")
    p.add_argument("--merge", nargs="+", metavar="SHARD_FILE", help="join shard outputs into manifest order")
    args = p.parse_args(argv)
    if not args.merge and not args.checkpoint:
        p.error("--checkpoint is required (unless --merge)")
    return args


# ---- shards ----

def parse_shard(text, env=os.environ):
    """(I, N) of --shard I/N, or of --shard auto from the array job's environment."""
    if text == "auto":
        return shard_from_environment(env)
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise cli.UserError(f"--shard {text}: expected I/N with 0 <= I < N (e.g. --shard 0/4), or auto")
    return i, n


def shard_from_environment(env):
    """(I, N) from a Slurm job array (SLURM_ARRAY_TASK_ID with _MIN and _COUNT, or _MAX and _STEP) or a
    Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with JOB_COMPLETIONS set to the Job's completions)."""
    try:
        if "SLURM_ARRAY_TASK_ID" in env:
            low, step = int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env.get("SLURM_ARRAY_TASK_STEP", 1))
            count = (int(env["SLURM_ARRAY_TASK_COUNT"]) if "SLURM_ARRAY_TASK_COUNT" in env
                     else (int(env["SLURM_ARRAY_TASK_MAX"]) - low) // step + 1)
            return parse_shard(f"{(int(env['SLURM_ARRAY_TASK_ID']) - low) // step}/{count}")
        if "JOB_COMPLETION_INDEX" in env:
            if "JOB_COMPLETIONS" not in env:
                raise cli.UserError("--shard auto: JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not; "
                                     "set it to the Job's spec.completions (see docs/k8s_score_job.yaml)")
            return parse_shard(f"{int(env['JOB_COMPLETION_INDEX'])}/{int(env['JOB_COMPLETIONS'])}")
    except (KeyError, ValueError) as e:
        raise cli.UserError(f"--shard auto: the array job's environment is incomplete or not numbers ({e})")
    raise cli.UserError("--shard auto: not inside a Slurm job array (SLURM_ARRAY_TASK_ID) or a Kubernetes "
                         "Indexed Job (JOB_COMPLETION_INDEX); pass --shard I/N (SHARD=I/N) instead")


# ---- the output: scores lines and embedding rows, kept aligned ----

HEADER_BYTES = len(emb_header(0, 1))


def emb_rows_on_disk(path, dim):
    """Complete float32 rows of an embeddings file (a torn last row does not count); 0 when there is none."""
    try:
        return max(0, (path.stat().st_size - HEADER_BYTES) // (4 * dim))
    except FileNotFoundError:
        return 0


def result_line(rec, clip, aggregate):
    row = {"clip_id": rec["clip_id"], "scene": rec["scene"], "camera": rec["camera"],
           "first_frame": rec["frames"][0]}
    if clip.error:
        row.update(score=None, tubelet_scores=[], error=clip.error)
    else:
        row.update(score=clip.score(aggregate),
                   tubelet_scores=[round(x, scorefile.SCORE_DECIMALS) for x in clip.novelty()])
        if clip.masked_cos is not None:  # the no-predictor baseline's score, for report.py's metrics
            row["masked_gap"] = scorefile.clip_score(clip.baseline_novelty(), aggregate)
    return (json.dumps(row) + "\n").encode()


def parse_row(line):
    """A scores line as a dict, or {} when it is not a JSON object."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a 5,000-digit number, nested too deeply
        return {}
    return row if isinstance(row, dict) else {}


class ScoresOutput:
    """OUT (scores JSONL), OUT.emb.npy (one embedding row per line) and OUT.meta.json (where they came
    from)."""

    def __init__(self, out, embed_dim):
        self.out, self.dim = Path(out), embed_dim
        self.emb, self.meta = Path(f"{out}.emb.npy"), Path(f"{out}.meta.json")

    def check_origin(self, meta):
        """Refuse to continue an output written by another checkpoint, manifest, encoder or shard."""
        if not self.meta.exists():
            raise cli.UserError(f"{self.out} exists without {self.meta.name}, so its origin is unknown; pass "
                                 f"--overwrite to replace it or choose another --output")
        try:
            old = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise cli.UserError(f"{self.meta}: corrupt; pass --overwrite to start over")
        diff = [k for k in IDENTITY if old.get(k) != meta.get(k)]
        if diff:
            raise cli.UserError(f"{self.out} was written with another {', '.join(diff)} "
                                 f"({old.get('checkpoint')}, {old.get('manifest')}); pass --overwrite to "
                                 "start over or choose another --output")

    def keep_complete(self, clips):
        """Cut an earlier run's output back to the lines that are complete, match the clips' order and have
        their embedding row (a kill may leave a torn line or row, or one more row than lines). Streams the
        file. Returns (lines kept, failed among them)."""
        rows = emb_rows_on_disk(self.emb, self.dim)
        kept, size, failed = 0, 0, 0
        with open(self.out, "rb") as f:
            for raw in f:
                if kept == rows or not raw.endswith(b"\n"):
                    break  # no embedding row yet, or torn by a kill mid-write: scored again
                row = parse_row(raw)
                if kept >= len(clips) or id_hash(str(row.get("clip_id"))) != clips.id_hashes[kept]:
                    raise cli.UserError(f"{self.out}:{kept + 1}: does not match the manifest's clip order; "
                                         f"pass --overwrite")
                kept, size, failed = kept + 1, size + len(raw), failed + ("error" in row)
        os.truncate(self.out, size)
        self._cut_embeddings(kept)
        return kept, failed

    def start(self, meta, overwrite, clips):
        """Write the meta file and return (lines already done, failed among them)."""
        done = (0, 0)
        if self.out.exists() and not overwrite:
            self.check_origin(meta)
            done = self.keep_complete(clips)
        else:
            cli.atomic_write_text(self.out, "")
            self._cut_embeddings(0)
        cli.atomic_write_text(self.meta, json.dumps({k: meta[k] for k in sorted(meta) if meta[k] is not None},
                                                     indent=1) + "\n")
        return done

    def _cut_embeddings(self, rows):
        if not self.emb.exists() or rows == 0:
            cli.atomic_write(self.emb, lambda f: f.write(emb_header(0, self.dim)))
            return
        os.truncate(self.emb, HEADER_BYTES + rows * 4 * self.dim)
        with open(self.emb, "r+b") as f:
            f.write(emb_header(rows, self.dim))


def write_scores(output, scorer, clips, done, failed):
    """Score clips[done:] and append a line and an embedding row per clip as it goes (a kill loses at most the
    clip being written). Returns the number of failed clips."""
    todo, aggregate = clips.tail(done), scorer.config["evaluation"]["aggregate"]
    nan_row = np.full(output.dim, np.nan, dtype="<f4").tobytes()
    rows, synced = done, time.time()
    try:
        with open(output.out, "ab") as lines, open(output.emb, "r+b") as emb:
            emb.seek(0, os.SEEK_END)

            def sync():
                lines.flush()
                emb.seek(0)
                emb.write(emb_header(rows, output.dim))
                emb.seek(0, os.SEEK_END)
                emb.flush()
                os.fsync(lines.fileno())
                os.fsync(emb.fileno())

            for clip in tqdm(scorer.score(todo), total=len(todo), unit="clip", mininterval=2,
                             file=sys.stderr):
                emb.write(nan_row if clip.error else clip.clip_emb.numpy().astype("<f4").tobytes())
                lines.write(result_line(todo[clip.index], clip, aggregate))
                emb.flush()
                lines.flush()
                rows, failed = rows + 1, failed + bool(clip.error)
                if time.time() - synced > SYNC_EVERY_S:
                    sync()
                    synced = time.time()
                # test hook: no-op unless JEPA_TEST_KILL_AT is set
                cli.kill_hook_for_tests("infer_line", rows)
            sync()
    except OSError as e:
        raise cli.UserError(f"cannot write {output.out}: {e.strerror or e}; free space, then rerun the same "
                             f"command (complete lines are kept)")
    return failed


def score(args):
    out = Path(args.output)
    shard = parse_shard(args.shard) if args.shard else (0, 1)
    cli.check_output(out, {"--checkpoint": args.checkpoint, "--manifest": args.manifest})
    target = cli.output_target(out)
    with cli.exclusive_lock(target.with_name(f".{target.name}.lock"), f"{out}"):  # one writer per output
        return score_locked(args, out, shard)


def score_locked(args, out, shard):
    import jepa  # torch: only scoring needs it, so --merge stays small and fast (e.g. on a login node)
    scorer = jepa.load_for_scoring(args.checkpoint, args.device, args.set, **cli.config_flags(args))
    clips = scan_manifest(args.manifest, scorer.config["data"]["root"], scorer.config["data"]["tubelet_size"],
                          shard)
    dim = scorer.encoder.embed_dim
    cli.check_output(out, needed_bytes=len(clips) * (512 + 4 * dim))  # a full disk is found before encoding
    meta = {"checkpoint": str(args.checkpoint), "encoder": scorer.config["model"]["encoder_name"],
            "manifest": str(args.manifest), "shard": args.shard and f"{shard[0]}/{shard[1]}",
            "aggregate": scorer.config["evaluation"]["aggregate"],
            "tubelet_size": scorer.config["data"]["tubelet_size"], "embed_dim": dim,
            "frames_base": clips.base, "checkpoint_sha256": cli.file_sha256(args.checkpoint),
            "manifest_fingerprint": clips.fingerprint, "encoder_fingerprint": scorer.encoder.fingerprint}
    output = ScoresOutput(out, dim)
    done, failed = output.start(meta, args.overwrite, clips)
    if done:
        print(f"resuming {out}: {done} clips already scored, {len(clips) - done} to go", file=sys.stderr)
    t0 = time.time()
    failed = write_scores(output, scorer, clips, done, failed)
    print(f"scored {len(clips) - failed} clips, {failed} failed, in {time.time() - t0:.1f}s -> {out} "
          f"(+ {output.emb.name})", file=sys.stderr)
    return 1 if failed else 0


# ---- merge ----

class ShardReader:
    """One shard's lines and embedding rows, read in step through scorefile (checked whole first)."""

    def __init__(self, path):
        scores = scorefile.Scores(path, redo="rerun that shard's command")
        self.path, self.meta = scores.path, scorefile.read_meta(path, redo="rerun that shard's command with "
                                                                           "--overwrite")
        if not isinstance(self.meta.get("embed_dim"), int):
            raise cli.UserError(f"{path}: no embed_dim in {path}.meta.json (scored by an older version?); "
                                 f"rescore that shard")
        emb = scorefile.Embeddings(scores)
        self.dim, self.rows = emb.dim, emb.raw_rows()
        self.lines = scorefile.lines(path, scores.redo)
        self.number, self.line, self.obj, self.clip_id = 0, None, None, None

    def advance(self):
        """Read the next line; returns its clip_id, or None at the end."""
        self.number += 1
        _, self.line, self.obj = next(self.lines, (None, None, {}))
        self.clip_id = self.obj.get("clip_id")
        return self.clip_id

    def row(self):
        return next(self.rows)


def check_same_origin(readers):
    for key in ("checkpoint_sha256", "embed_dim", "encoder_fingerprint", "aggregate"):
        if len({json.dumps(r.meta.get(key)) for r in readers}) > 1:
            raise cli.UserError(f"shards were scored with different {key.replace('_sha256', 's')}; rescore "
                                 "them with one")


def interleave(clips, readers, manifest):
    """Yield (reader) in manifest order: each shard is in manifest order, so the next clip is always at the
    head of one shard. Refuses a missing, duplicated, out-of-order or unknown clip."""
    heads = {}  # id_hash of the clip at the head of a shard -> that shard's reader

    def push(reader):
        cid = reader.advance()
        if cid is None:
            return
        if id_hash(cid) in heads:
            other = heads[id_hash(cid)]
            raise cli.UserError(f"{reader.path}:{reader.number}: clip {cid!r} is also in {other.path}")
        heads[id_hash(cid)] = reader

    for reader in readers:
        push(reader)
    for k in range(len(clips)):
        reader = heads.pop(int(clips.id_hashes[k]), None)
        if reader is None:
            raise cli.UserError(f"shards do not cover {manifest}: clip {clips[k]['clip_id']!r} (line "
                                 f"{clips.lines[k]}) is in no shard, or not where manifest order puts it")
        yield reader
        push(reader)
    for reader in heads.values():
        raise cli.UserError(f"{reader.path}:{reader.number}: clip {reader.clip_id!r} is not in {manifest} "
                             f"(or is out of manifest order, or in two shards)")


def merge(args):
    """Join shard files (lines and embedding rows) into manifest order, streaming: nothing is held whole."""
    out = Path(args.output)
    cli.check_output(out, {"--manifest": args.manifest, **{f"shard {p}": p for p in args.merge}})
    target = cli.output_target(out)
    with cli.exclusive_lock(target.with_name(f".{target.name}.lock"), f"{out}"):
        return merge_locked(args, out)


def merge_locked(args, out):
    readers = [ShardReader(p) for p in args.merge]
    check_same_origin(readers)
    clips = scan_manifest(args.manifest, tubelet_size=readers[0].meta.get("tubelet_size", 1))
    dim, failed = readers[0].dim, 0

    def write_both(lines):  # the rows file is complete (and replaced) before the lines file is
        def write_rows(emb):
            nonlocal failed
            emb.write(emb_header(len(clips), dim))
            for reader in interleave(clips, readers, args.manifest):
                lines.write(reader.line)
                emb.write(reader.row())
                failed += "error" in reader.obj
            # every shard line checked: the earlier set goes, so a kill never leaves new rows beside old lines
            cli.remove_earlier_set(out, f"{out}.meta.json")
        cli.atomic_write(f"{out}.emb.npy", write_rows)

    cli.atomic_write(out, write_both)
    meta = {k: v for k, v in readers[0].meta.items() if k != "shard"}
    meta["manifest_fingerprint"] = clips.fingerprint
    cli.atomic_write_text(f"{out}.meta.json", json.dumps(dict(sorted(meta.items())), indent=1) + "\n")
    print(f"merged {len(readers)} shards, {len(clips)} clips ({failed} failed) -> {out} "
          f"(+ {out.name}.emb.npy)",
          file=sys.stderr)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(argv)
    return merge(args) if args.merge else score(args)


if __name__ == "__main__":
    cli.run_cli(main, on_interrupt="complete lines are kept; run the same command again to continue")
