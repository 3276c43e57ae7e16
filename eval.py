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
from collections import defaultdict

import torch
from tqdm import tqdm

import jepa
from manifest import check_frames, read_manifest


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jepa.add_scoring_args(p)
    p.add_argument("--labels", help="JSONL of {clip_id, binary_label: 0|1|null} to add ranking metrics")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    jepa.check_output_writable(args.output)
    ckpt, cfg, encoder, head, workers = jepa.load_for_scoring(args)
    records = read_manifest(args.manifest, cfg["data"]["root"], cfg["data"]["tubelet_size"])
    check_frames(records, args.manifest)
    labels = None
    if args.labels:
        import report  # ranking metrics live beside the HTML report
        labels = report.read_labels(args.labels)
    ev = cfg["evaluation"]
    pred_cos, masked_cos, per_scene = [], [], defaultdict(list)
    scores, gaps = {}, {}
    dataset = jepa.JEPADataset(records, cfg, encoder.processor)
    stream = jepa.encode_stream(encoder, dataset, ev["batch_size"], workers)
    for i, clean_emb, masked_emb, mask_frac, error in tqdm(stream, total=len(records), unit="clip", mininterval=2):
        rec = records[i]
        if error:
            raise jepa.UserError(f"{args.manifest}:{rec['line']}: {error}")
        cos_pred, cos_masked = jepa.tubelet_cosines(head, clean_emb, masked_emb, mask_frac)
        pred_cos.append(cos_pred)
        masked_cos.append(cos_masked)
        per_scene[rec["scene"]].append(cos_pred)
        scores[rec["clip_id"]] = jepa.clip_score((1 - cos_pred).tolist(), ev["aggregate"])
        gaps[rec["clip_id"]] = jepa.clip_score((1 - cos_masked).tolist(), ev["aggregate"])
    all_pred = torch.cat(pred_cos).double()
    result = {"metric": ev["metric"],
              "mean_cosine_similarity": all_pred.mean().item(),
              "std_cosine_similarity": all_pred.std(unbiased=False).item(),
              "masked_cosine_similarity": torch.cat(masked_cos).double().mean().item(),
              "per_scene": {s: torch.cat(v).double().mean().item() for s, v in sorted(per_scene.items())},
              "num_clips": len(records), "num_tubelets": len(all_pred),
              "checkpoint": str(args.checkpoint), "encoder": cfg["model"]["encoder_name"],
              "epoch": ckpt["epoch"], "aggregate": ev["aggregate"]}
    if labels is not None:
        result["ranking"] = {"trained": report.ranking_metrics(scores, labels, ev["k_values"]),
                             "masked_gap": report.ranking_metrics(gaps, labels, ev["k_values"]),
                             "random": report.random_baseline(labels, ev["k_values"], scores)}
    jepa.atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"cosine(pred, clean) {result['mean_cosine_similarity']:.4f} +- {result['std_cosine_similarity']:.4f}  "
          f"vs no-predictor cosine(masked, clean) {result['masked_cosine_similarity']:.4f}  "
          f"({result['num_clips']} clips, {result['num_tubelets']} tubelets)")
    if labels is not None:
        print(report.ranking_table(result["ranking"], ev["k_values"]))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    jepa.run_cli(main)
