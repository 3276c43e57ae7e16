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
import math
import sys
from collections import defaultdict

from tqdm import tqdm

import cli
import scorefile
from manifest import check_frames, raise_problems, read_jsonl, read_manifest


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
        raise_problems(problems)  # capped: the first MAX_LISTED, then counted by kind
    return {obj["clip_id"]: obj["binary_label"] for _, obj in rows}


# ---- ranking metrics (report.py and selection.py present them too) ----

def rank_order(scores):
    """Clip ids with a score, highest first; ties broken by clip_id so every run ranks identically."""
    return sorted((c for c, s in scores.items() if s is not None), key=lambda c: (-scores[c], c))


def _dcg(rel):
    return sum(r / math.log2(i + 1) for i, r in enumerate(rel, 1))


def ranking_metrics(scores, labels, k_values):
    """AP, P@K, R@K and NDCG@K of ranking `scores` {clip_id: float | None} against `labels` {clip_id:
    0|1|None}.

    Only clips with both a score and a non-null label count; the others are removed before ranking (a null
    label is unlabelled, never negative). P@K divides by min(K, n labelled), so for K >= n it is the positive
    rate. AP is non-interpolated (mean precision at each positive's rank). NDCG@K uses binary gains and a
    log2(rank + 1) discount against the all-positives-first ranking. AP, R@K and NDCG@K are None without
    positives; everything rate-like is None without labelled clips."""
    rel = [labels[c] for c in rank_order(scores) if labels.get(c) is not None]
    n, pos = len(rel), sum(rel)
    hits, precisions = 0, []
    for i, r in enumerate(rel, 1):
        hits += r
        if r:
            precisions.append(hits / i)
    out = {"average_precision": sum(precisions) / pos if pos else None,
           "precision_at_k": {}, "recall_at_k": {}, "ndcg_at_k": {}, "num_labelled": n, "num_positive": pos}
    for k in k_values:
        found = sum(rel[:k])
        out["precision_at_k"][str(k)] = found / min(k, n) if n else None
        out["recall_at_k"][str(k)] = found / pos if pos else None
        out["ndcg_at_k"][str(k)] = _dcg(rel[:k]) / _dcg([1] * min(k, pos)) if pos else None
    return out


def random_baseline(labels, k_values, scored):
    """Exact expected ranking_metrics of a uniformly random ranking of the same clips.

    `scored`: the scores dict (or the scored clip ids); an int (the number of scored clips) means every
    labelled clip was scored. A random order of all scored clips puts the labelled ones in a random order,
    so only n (labelled and scored) and the positive count matter. Expected AP is exact, not the positive
    rate it tends to for large n: (H_n + (n - H_n)(pos - 1)/(n - 1)) / n with H_n the n-th harmonic number."""
    if isinstance(scored, int):
        rel = [v for v in labels.values() if v is not None]
    else:
        ids = [c for c in scored if not isinstance(scored, dict) or scored[c] is not None]
        rel = [labels[c] for c in ids if labels.get(c) is not None]
    n, pos = len(rel), sum(rel)
    rate = pos / n if n else None
    h_n = sum(1 / i for i in range(1, n + 1))
    ap = (h_n + (n - h_n) * (pos - 1) / (n - 1)) / n if n > 1 else 1.0
    out = {"average_precision": ap if pos else None,
           "precision_at_k": {}, "recall_at_k": {}, "ndcg_at_k": {}, "num_labelled": n, "num_positive": pos}
    for k in k_values:
        m = min(k, n)
        out["precision_at_k"][str(k)] = rate
        out["recall_at_k"][str(k)] = m / n if pos else None
        # E[DCG@K] = rate * sum of discounts; the ideal DCG is fixed, so the ratio is the exact expectation
        out["ndcg_at_k"][str(k)] = rate * _dcg([1] * m) / _dcg([1] * min(k, pos)) if pos else None
    return out


def ranking_table(blocks, k_values):
    """Fixed-width text table: one row per method (e.g. trained, masked_gap, random), AP then P/R/NDCG@K."""
    cols = ["AP"] + [f"{m}@{k}" for k in k_values for m in ("P", "R", "NDCG")]
    keys = [("average_precision", None)] + [(f"{m}_at_k", str(k)) for k in k_values
                                            for m in ("precision", "recall", "ndcg")]
    width = max([len("method")] + [len(name) for name in blocks])
    lines = [f"{'method':<{width}}" + "".join(f"{c:>9}" for c in cols)]
    for name, m in blocks.items():
        vals = [m[key] if k is None else m[key].get(k) for key, k in keys]
        lines.append(f"{name:<{width}}" + "".join(f"{'-' if v is None else f'{v:.3f}':>9}" for v in vals))
    first = next(iter(blocks.values()), {})
    lines.append(f"({first.get('num_labelled', 0)} labelled clips with a score, "
                 f"{first.get('num_positive', 0)} positive; P@K divides by min(K, labelled); "
                 "'-' = undefined without positives)")
    return "\n".join(lines)



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
        self.scores[rec["clip_id"]] = clip.score(self.aggregate)
        self.gaps[rec["clip_id"]] = scorefile.clip_score(clip.baseline_novelty(), self.aggregate)

    def summary(self):
        import torch  # lazily, like jepa in main: report.py and selection.py import this file and start fast
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
    import jepa  # torch, imported here so that importing eval (report.py does) stays torch-free
    scorer = jepa.load_for_scoring(args.checkpoint, args.device, args.set, **cli.config_flags(args))
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
