"""Evaluate a trained predictor head on a manifest (runs on a laptop CPU).

Usage:
  python eval.py --checkpoint experiments/run/best.pt --manifest val.jsonl --output eval.json
                 [--data-root R] [--encoder NAME_OR_DIR] [--device auto] [--labels labels.jsonl]
                 [--selection selection.jsonl]
  make eval CKPT=experiments/run/best.pt MANIFEST=val.jsonl [LABELS=labels.jsonl] [SELECTION=]

Writes JSON: mean/std cosine similarity of predicted vs clean embeddings over all tubelets, the no-predictor
baseline cos(masked, clean), per-scene means, counts. With --labels ({"clip_id", "binary_label": 0|1|null}
per line) it adds a `ranking` block (ranking.compare): the trained score against the masked_gap, random,
untrained_head (the same head freshly initialised with the run's seed) and knn_density (1 - mean top-k cosine
of the clip embedding to the training clips' embeddings, from the run's features/ cache) baselines, AP and
AUROC with 95% bootstrap intervals, paired differences and a verdict (README, evaluation).
"""
import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from tqdm import tqdm

import cli
import ranking
import scorefile
from manifest import assign_splits, check_frames, raise_problems, read_jsonl, read_manifest
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
        raise_problems(problems)  # capped: the first MAX_LISTED, then counted by kind
    return {obj["clip_id"]: obj["binary_label"] for _, obj in rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_scoring_args(p)
    p.add_argument("--labels", help="JSONL of {clip_id, binary_label: 0|1|null} to add ranking metrics")
    p.add_argument("--selection", help="selection.jsonl (make select) the labels were taken from: eval "
                   "counts the labelled clips it picked and warns that metrics on them are biased upward")
    return p.parse_args(argv)


def selected_clip_ids(path):
    """Clip ids a selection file (make select's JSONL) put in front of reviewers: its picks and the
    near-duplicates folded under them."""
    from selection import read_selection
    picks = read_selection(path)
    return {p["clip_id"] for p in picks} | {d["clip_id"] for p in picks for d in p["near_duplicates"]}


RANKED_SOURCES = ("selection", "ranking")  # a label's "source" as the review page exports it


def ranked_label_ids(labels_path):
    """The clip_ids whose label line says it was given on the review page ("source": "selection" or
    "ranking"): clips a ranking chose to show."""
    return {obj["clip_id"] for _, obj in read_jsonl(labels_path, "labels file")
            if obj.get("source") in RANKED_SOURCES}


def selection_warning(block, labels, selected, path):
    """Count the labelled clips a selection (or the ranking on the review page) picked; add a warning when
    there are any. `path`: the selection file, or None when only the labels' source fields tell."""
    n = sum(1 for c, v in labels.items() if v is not None and c in selected)
    block["labels_from_selection"] = n
    where = f"the selection {path}" if path else "the review page (their source field says so)"
    if n:
        block["warnings"].append(f"{n} of the labelled clips came from {where}, i.e. the top of a "
                                 "ranking: metrics on them are biased upward; measure on a random sample "
                                 "(make sample-for-labels)")


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
        self.untrained, self.clip_emb, self.scene = {}, {}, {}  # clip_id -> untrained score / emb / scene

    def add(self, rec, clip, untrained_cos=None):
        self.pred_cos.append(clip.pred_cos)
        self.masked_cos.append(clip.masked_cos)
        self.per_scene[rec["scene"]].append(clip.pred_cos)
        self.scores[rec["clip_id"]] = clip.score(self.aggregate)
        self.gaps[rec["clip_id"]] = scorefile.clip_score(clip.baseline_novelty(), self.aggregate)
        self.scene[rec["clip_id"]] = rec["scene"]
        if untrained_cos is not None:
            self.untrained[rec["clip_id"]] = scorefile.clip_score((1 - untrained_cos).tolist(),
                                                                  self.aggregate)
            self.clip_emb[rec["clip_id"]] = clip.clip_emb.float().numpy()

    def summary(self):
        import torch  # lazily, like jepa in main: report.py and selection.py import this file and start fast
        all_pred = torch.cat(self.pred_cos).double()
        return {"mean_cosine_similarity": all_pred.mean().item(),
                "std_cosine_similarity": all_pred.std(unbiased=False).item(),
                "masked_cosine_similarity": torch.cat(self.masked_cos).double().mean().item(),
                "per_scene": {s: torch.cat(v).double().mean().item()
                              for s, v in sorted(self.per_scene.items())},
                "num_tubelets": len(all_pred)}

    def ranking(self, labels, k_values, knn_k=5, train_emb=None, unavailable=None, seed=0):
        """ranking.compare over the labelled clips with a score: trained, masked_gap, random, untrained_head
        and knn_density (reported unavailable, with the reason, when `train_emb` is None)."""
        ids = sorted(c for c in self.scores if labels.get(c) is not None)
        methods = {"trained": self.scores, "masked_gap": self.gaps, "random": None}
        if self.untrained:
            methods["untrained_head"] = self.untrained
        arrays = {m: None if s is None else np.array([s[c] for c in ids], dtype=float)
                  for m, s in methods.items()}
        if train_emb is not None and ids:
            arrays["knn_density"] = ranking.knn_density(np.stack([self.clip_emb[c] for c in ids]),
                                                        train_emb, knn_k)
        out = ranking.compare(arrays, np.array([labels[c] for c in ids], dtype=int), k_values,
                              scenes=[self.scene[c] for c in ids], seed=seed, clip_ids=ids)
        if train_emb is None:
            out["knn_density"] = {"available": False, "reason": unavailable or "no training embeddings"}
        else:
            out["knn_density"]["k"] = knn_k
        return out


def untrained_head(scorer):
    """The same PredictorHead class and sizes as the checkpoint's, freshly initialised with the run's seed
    (as train.py seeds it before building the head), never trained; the global torch RNG is left as it was."""
    import torch  # lazily, as everywhere in this file
    import jepa
    m = scorer.config["model"]
    device = next(scorer.head.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(scorer.config["seed"])
        head = jepa.PredictorHead(scorer.checkpoint["embed_dim"], m["predictor_hidden_dim"],
                                  m["predictor_dropout"])
    return head.to(device).eval()


def score_with_untrained(scorer, records, head):
    """jepa.score_clips with a second head: yields (ClipScore, untrained cos(pred, clean) or None)."""
    import jepa  # lazily, as everywhere in this file
    dataset = jepa.JEPADataset(records, scorer.config, scorer.encoder.processor)
    for clip in jepa.encode_stream(scorer.encoder, dataset, scorer.config["evaluation"]["batch_size"],
                                   scorer.workers):
        if clip.error:
            yield jepa.ClipScore(clip.index, None, None, None, clip.error), None
            continue
        pred_cos, masked_cos = jepa.tubelet_cosines(scorer.head, clip.clean_emb, clip.masked_emb,
                                                    clip.mask_frac)
        untrained_cos, _ = jepa.tubelet_cosines(head, clip.clean_emb, clip.masked_emb, clip.mask_frac)
        yield (jepa.ClipScore(clip.index, pred_cos, masked_cos, jepa.clip_embedding(clip.clean_emb), None),
               untrained_cos)


def training_clip_embeddings(checkpoint_path, ckpt, cfg, scratch):
    """(scorefile.NpyRows (n_train, D), None) of the training clips' clip embeddings, read a slice at a time
    so 1M clips need not fit in memory: the run folder's train_clip_emb.npy (train.py writes it), or for runs
    from before it, derived from the features/ cache into a file under `scratch`; (None, reason) when
    neither can give them."""
    run_dir = Path(checkpoint_path).parent
    try:
        tag = json.loads((run_dir / "train_clip_emb.json").read_text())
        emb = scorefile.NpyRows(run_dir / "train_clip_emb.npy")
        if tag["features_fingerprint"] == ckpt.get("features_fingerprint") and len(emb) == tag["rows"]:
            return emb, None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        pass  # missing, torn or from other features: derive them from features/ instead
    return derived_clip_embeddings(run_dir, cfg, Path(scratch) / "train_clip_emb.npy")


def training_clip_ids(run_dir, cfg):
    """The clip_ids the run trained on, from the manifest recorded in its folder; ValueError(reason) if
    unknown."""
    record = run_dir / "manifest.json"
    try:
        recorded = json.loads(record.read_text())
        path = recorded["path"]
        if not Path(path).is_file() or cli.file_sha256(path) != recorded["sha256"]:
            raise ValueError(f"{path}: the training manifest of {run_dir} is gone or changed since training")
        records = read_manifest(path, cfg["data"]["root"], cfg["data"]["tubelet_size"])
    except cli.UserError as e:
        raise ValueError(f"cannot read the training manifest: {e}")
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{record}: missing or unreadable, so the training clips are unknown")
    splits = assign_splits(records, cfg["seed"], cfg["data"]["val_fraction"],
                           cfg["data"]["use_manifest_split"])
    return {r["clip_id"] for r, s in zip(records, splits) if s == "train"}


def derived_clip_embeddings(run_dir, cfg, out):
    """The training clips' mean clean tubelet embeddings from the run's features/ cache, appended row by row
    to the .npy `out` (one chunk in memory at a time) and returned as NpyRows, or (None, reason)."""
    import jepa
    import train  # torch, lazily, as everywhere in this file: the owner of the feature chunk format
    folders = [f for f in (run_dir / "features", train.linked_features(run_dir)) if f is not None]
    if not any(p for f in folders for p in f.glob("chunk_*.pt")):
        return None, f"no features/ cache in {run_dir} (the run folder of the checkpoint) to take the " \
                     "training clips' embeddings from"
    try:
        train_ids = training_clip_ids(run_dir, cfg)
    except ValueError as e:
        return None, str(e)
    seen, dim = set(), None
    with open(out, "wb") as f:
        try:
            for clip_id, feats in (pair for folder in folders for pair in train.iter_chunks(folder)):
                if clip_id in train_ids and clip_id not in seen:
                    if dim is None:  # a header for every training clip; rows not found stay zero
                        dim = feats.clean_emb.shape[1]
                        f.write(scorefile.emb_header(len(train_ids), dim))
                    f.write(jepa.clip_embedding(feats.clean_emb).numpy().tobytes())
                    seen.add(clip_id)
        except cli.UserError as e:  # a torn or foreign chunk: the baseline is unavailable, eval goes on
            return None, str(e)
        if not seen:
            return None, f"the features/ cache of {run_dir} holds none of its training clips"
        f.truncate(f.tell() + (len(train_ids) - len(seen)) * dim * 4)
    return scorefile.NpyRows(out, n=len(seen)), None


def main(argv=None):
    args = parse_args(argv)
    cli.check_output(args.output, {"--checkpoint": args.checkpoint, "--manifest": args.manifest,
                                    "--labels": args.labels, "--selection": args.selection})
    labels = read_labels(args.labels) if args.labels else None  # bad labels: found before the encoder loads
    if args.selection and labels is None:
        raise cli.UserError(f"--selection {args.selection}: only means something with --labels (LABELS=)")
    selected = selected_clip_ids(args.selection) if args.selection else None
    import jepa  # torch, imported here so that importing eval (report.py does) stays torch-free
    scorer = jepa.load_for_scoring(args.checkpoint, args.device, args.set, **cli.config_flags(args))
    records = read_manifest(args.manifest, scorer.config["data"]["root"],
                            scorer.config["data"]["tubelet_size"])
    check_frames(records, args.manifest)
    if labels is not None:
        check_label_overlap(labels, records, args.labels, args.manifest)
    ev = scorer.config["evaluation"]
    evaluation = Evaluation(ev["aggregate"])
    stream = (score_with_untrained(scorer, records, untrained_head(scorer)) if labels is not None
              else ((clip, None) for clip in scorer.score(records)))
    for clip, untrained_cos in tqdm(stream, total=len(records), unit="clip", mininterval=2):
        if clip.error:
            raise cli.UserError(f"{args.manifest}:{records[clip.index]['line']}: {clip.error}")
        evaluation.add(records[clip.index], clip, untrained_cos)
    result = {**evaluation.summary(), "num_clips": len(records), "checkpoint": str(args.checkpoint),
              "encoder": scorer.config["model"]["encoder_name"], "epoch": scorer.checkpoint["epoch"],
              "aggregate": ev["aggregate"]}
    if labels is not None:
        with tempfile.TemporaryDirectory() as scratch:
            train_emb, why = training_clip_embeddings(args.checkpoint, scorer.checkpoint, scorer.config,
                                                      scratch)
            result["ranking"] = evaluation.ranking(labels, ev["k_values"], ev["knn_k"], train_emb, why,
                                                   scorer.config["seed"])
            del train_emb  # the memory map, closed before its folder goes
        ranked = ranked_label_ids(args.labels)
        if selected is not None or ranked:
            selection_warning(result["ranking"], labels, (selected or set()) | ranked, args.selection)
    cli.atomic_write_text(args.output, json.dumps(result, indent=2) + "\n")
    print(f"cosine(pred, clean) {result['mean_cosine_similarity']:.4f} +- "
          f"{result['std_cosine_similarity']:.4f}  vs no-predictor cosine(masked, clean) "
          f"{result['masked_cosine_similarity']:.4f}  ({result['num_clips']} clips, "
          f"{result['num_tubelets']} tubelets)")
    if labels is not None:
        print(ranking.format_table(result["ranking"]))
        if "reason" in result["ranking"]["knn_density"]:
            print(f"knn_density unavailable: {result['ranking']['knn_density']['reason']}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    cli.run_cli(main, on_interrupt="nothing was written; run the same command again")
