"""Evaluate a trained predictor head on a manifest (runs on a laptop CPU).

Usage:
  python eval.py --checkpoint experiments/run/best.pt --manifest val.jsonl --output eval.json
                 [--data-root R] [--encoder NAME_OR_DIR] [--device auto] [--labels labels.jsonl]
  make eval CKPT=experiments/run/best.pt MANIFEST=val.jsonl [LABELS=labels.jsonl]

Writes JSON: mean/std cosine similarity of predicted vs clean embeddings over all tubelets, the no-predictor
baseline cos(masked, clean), per-scene means, counts. With --labels ({"clip_id", "binary_label": 0|1|null}
per line) it adds a `ranking` block comparing the trained score with the masked_gap and random baselines.
"""
import argparse
import json
import sys
from collections import defaultdict

import torch
from tqdm import tqdm

import cli
import jepa
from manifest import check_frames, read_jsonl, read_manifest
from ranking import rank_order, random_baseline, ranking_metrics, ranking_table  # noqa: F401 (re-exported)


def read_labels(path):
    """Labels JSONL {"clip_id", "binary_label": 0 | 1 | null} -> {clip_id: 0 | 1 | None}; None =
    unlabelled."""
    rows = read_jsonl(path, "labels file", " (pass LABELS=path/to/labels.jsonl)")
    problems = [f"{where}: binary_label must be 0, 1 or null, got {obj.get('binary_label', 'nothing')!r}"
                for where, obj in rows
                # JSON true would pass as 1
                if "binary_label" not in obj or isinstance(obj["binary_label"], bool)
                or obj["binary_label"] not in (0, 1, None) or isinstance(obj["binary_label"], float)]
    if problems:
        raise cli.UserError("\n".join(problems))
    return {obj["clip_id"]: obj["binary_label"] for _, obj in rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_scoring_args(p)
    p.add_argument("--labels", help="JSONL of {clip_id, binary_label: 0|1|null} to add ranking metrics")
    return p.parse_args(argv)


def check_label_overlap(labels, records, labels_path, manifest):
    """A labels file must be about the manifest's clips: none in common is an error, few a warning, each with
    an example id from both sides (ids are the manifest's clip_id, derived when a line has none)."""
    clip_ids = [r["clip_id"] for r in records]
    matched = sum(c in labels for c in clip_ids)
    example = (f"e.g. the labels have {next(iter(labels))!r}, the manifest has {clip_ids[0]!r}; use the "
               f"manifest's clip_id values (`make check` prints how missing ones are derived)")
    if matched == 0:
        raise cli.UserError(f"{labels_path}: none of its {len(labels)} clip_ids is in {manifest}; {example}")
    if matched < len(labels) / 2:
        print(f"warning: {labels_path}: only {matched} of its {len(labels)} clip_ids are in {manifest}; "
              f"{example}", file=sys.stderr)


class Evaluation:
    """Running totals of one evaluation: per-tubelet cosines, per-scene cosines and per-clip scores."""

    def __init__(self, aggregate):
        self.aggregate = aggregate
        self.pred_cos, self.masked_cos, self.per_scene = [], [], defaultdict(list)
        self.scores, self.gaps = {}, {}  # clip_id -> trained score / no-predictor baseline score

    def add(self, rec, clip):
        self.pred_cos.append(clip.pred_cos)
        self.masked_cos.append(clip.masked_cos)
        self.per_scene[rec["scene"]].append(clip.pred_cos)
        self.scores[rec["clip_id"]] = cli.clip_score((1 - clip.pred_cos).tolist(), self.aggregate)
        self.gaps[rec["clip_id"]] = cli.clip_score((1 - clip.masked_cos).tolist(), self.aggregate)

    def summary(self):
        all_pred = torch.cat(self.pred_cos).double()
        return {"mean_cosine_similarity": all_pred.mean().item(),
                "std_cosine_similarity": all_pred.std(unbiased=False).item(),
                "masked_cosine_similarity": torch.cat(self.masked_cos).double().mean().item(),
                "per_scene": {s: torch.cat(v).double().mean().item()
                              for s, v in sorted(self.per_scene.items())},
                "num_tubelets": len(all_pred)}

    def ranking(self, labels, k_values):
        return {"trained": ranking_metrics(self.scores, labels, k_values),
                "masked_gap": ranking_metrics(self.gaps, labels, k_values),
                "random": random_baseline(labels, k_values, self.scores)}


def main(argv=None):
    args = parse_args(argv)
    cli.check_output(args.output, {"--checkpoint": args.checkpoint, "--manifest": args.manifest,
                                    "--labels": args.labels})
    labels = read_labels(args.labels) if args.labels else None  # bad labels: found before the encoder loads
    scorer = jepa.load_for_scoring(args)
    records = read_manifest(args.manifest, scorer.config["data"]["root"],
                            scorer.config["data"]["tubelet_size"])
    check_frames(records, args.manifest)
    if labels is not None:
        check_label_overlap(labels, records, args.labels, args.manifest)
    ev = scorer.config["evaluation"]
    evaluation = Evaluation(ev["aggregate"])
    for clip in tqdm(scorer.score(records), total=len(records), unit="clip", mininterval=2):
        if clip.error:
            raise cli.UserError(f"{args.manifest}:{records[clip.index]['line']}: {clip.error}")
        evaluation.add(records[clip.index], clip)
    result = {**evaluation.summary(), "num_clips": len(records), "checkpoint": str(args.checkpoint),
              "encoder": scorer.config["model"]["encoder_name"], "epoch": scorer.checkpoint["epoch"],
              "aggregate": ev["aggregate"]}
    if labels is not None:
        result["ranking"] = evaluation.ranking(labels, ev["k_values"])
    cli.atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"cosine(pred, clean) {result['mean_cosine_similarity']:.4f} +- "
          f"{result['std_cosine_similarity']:.4f}  vs no-predictor cosine(masked, clean) "
          f"{result['masked_cosine_similarity']:.4f}  ({result['num_clips']} clips, "
          f"{result['num_tubelets']} tubelets)")
    if labels is not None:
        print(ranking_table(result["ranking"], ev["k_values"]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    cli.run_cli(main, on_interrupt="nothing was written; run the same command again")
