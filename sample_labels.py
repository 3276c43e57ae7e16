"""A seeded random sample of scored clips, stratified by scene, to label without bias (no torch).

Usage:
  python sample_labels.py --scores scores.jsonl [--n 200] [--seed 0] [--output labels_sample.jsonl]
  make sample-for-labels SCORES=scores.jsonl [N=200] [OUT=labels_sample.jsonl beside SCORES]

Labels taken from the top of a ranking make that ranking look better than it is. This draws N clips with
a score (failed clips, null or NaN, are skipped) at random, each scene getting its proportional share
(ranking.stratified_sample), and writes OUT: the labels template eval.py --labels reads, one
{"clip_id", "binary_label": null, "source": "random_sample"} per line, and OUT with a .csv suffix for
reviewers (clip_id, scene, camera, first_frame, binary_label empty; no score, so it cannot sway the
reviewer). Fill binary_label with 0 or 1 (or leave null) and pass OUT to make eval LABELS=.
"""
import argparse
import csv
import io
import json
from pathlib import Path

import cli
import ranking
import scorefile

CSV_COLUMNS = ("clip_id", "scene", "camera", "first_frame", "binary_label")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="scores JSONL written by infer.py (make score)")
    p.add_argument("--n", type=int, default=200, help="clips to sample (all of them if fewer are scored)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sample: the same seed gives the same clips")
    p.add_argument("--output", help="labels template JSONL (default: labels_sample.jsonl beside --scores)")
    return p.parse_args(argv)


def sample_rows(rows, n, seed):
    """The scored rows (a finite score) of a stratified random sample of n, in file order."""
    scored = [r for r in rows if scorefile.is_scored(r)]
    if not scored:
        raise cli.UserError("no clip in the scores file has a score (all failed); nothing to sample")
    return [scored[i] for i in ranking.stratified_sample([r.get("scene", "") for r in scored], n, seed)]


def main(argv=None):
    args = parse_args(argv)
    if args.n < 1:
        raise cli.UserError(f"--n {args.n}: must be >= 1 (N=200 samples 200 clips)")
    out = Path(args.output or Path(args.scores).parent / "labels_sample.jsonl")
    csv_out = out.with_suffix(".csv")
    cli.check_output(out, {"--scores": args.scores})
    cli.check_output(csv_out, {"--scores": args.scores})
    rows = [obj for _, _, obj in scorefile.lines(args.scores)]
    picked = sample_rows(rows, args.n, args.seed)
    cli.remove_earlier_set(out, csv_out)  # a kill between the two writes never leaves a new JSONL, old CSV
    cli.atomic_write_text(out, "".join(json.dumps({"clip_id": r["clip_id"], "binary_label": None,
                                                   "source": "random_sample"}) + "\n"
                                       for r in picked))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in picked:
        writer.writerow([r["clip_id"], r.get("scene", ""), r.get("camera", ""), r.get("first_frame", ""), ""])
    cli.atomic_write_text(csv_out, buf.getvalue())
    scenes = len({r.get("scene", "") for r in picked})
    print(f"sampled {len(picked)} of {sum(map(scorefile.is_scored, rows))} scored clips from "
          f"{scenes} scenes (seed {args.seed}); wrote {out} (labels template) and {csv_out} (for reviewers)")


if __name__ == "__main__":
    cli.run_cli(main)
