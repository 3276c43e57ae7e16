"""Pick a diverse set of clips for labelling, and find the clips most like a given one, from infer.py's
scores and the embeddings written beside them.

Usage:
  python selection.py select --scores S [--manifest M] [--data-root R] [--labels L] [--top 50]
                             [--output selection.jsonl]
  python selection.py similar --scores S --clip CLIP_ID [--k 20] [--output similar.jsonl]
  make select SCORES=S [MANIFEST=M] [LABELS=L] [TOP=50] [OUT=selection.jsonl]
  make similar SCORES=S CLIP=CLIP_ID [K=20] [OUT=similar.jsonl]

Inputs: the scores JSONL S (one line per clip), S.emb.npy ((N, D) float32, row i = line i, a failed clip's
row all NaN) and S.meta.json (its embed_dim).
select walks the scored clips by score (highest first, ties by clip_id) and takes a clip unless its cosine to
a clip already taken is >= selection.max_similarity (a near-duplicate) or its scene already has
selection.per_scene picks; it stops after --top picks. Every clip it skips is listed under the pick that
suppressed it. Writes OUT (JSONL, one line per pick), the same picks as OUT with a .csv suffix, and
OUT.meta.json (settings, counts, nearest-neighbour cosines of the raw top clips, label metrics). It prints
those cosines, to help choose selection.max_similarity, and with --labels compares the raw ranking with the
selection.
similar lists the clip itself (rank 0, cosine 1) and then the K clips nearest to it by cosine.
Embeddings are read through short-lived memory maps, in pieces of about selection.chunk_mb: never whole.
"""
import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

import cli
import scorefile
from manifest import read_jsonl
from scorefile import Embeddings, Scores

WALK_BATCH = 1024  # candidates read and compared with the picks in one matrix product
NN_THRESHOLDS = (0.8, 0.9, 0.95, 0.98, 0.99)  # printed shares of top clips with a neighbour at >= each
PICK_COLUMNS = ("rank", "clip_id", "scene", "camera", "score", "first_frame", "last_frame", "first_timestamp",
                "last_timestamp")
PLAIN_CLIP_ID = re.compile(rb'"clip_id"\s*:\s*"([^"\\]*)"')  # no escapes in it: its bytes are its text


# ---- selection.jsonl, the format this file writes: its one reader (report.py, eval.py) ----

DUP_REASONS = ("near_duplicate", "scene_quota")


def _pick_problem(obj, last_rank):
    """What is wrong with one selection.jsonl line, or None."""
    is_int = isinstance(obj.get("rank"), int) and not isinstance(obj.get("rank"), bool)
    if not is_int or obj["rank"] <= last_rank:
        return f"rank must be an integer above the previous line's ({last_rank}), got {obj.get('rank')!r}"
    if not scorefile.is_number(obj.get("score")):
        return f"score must be a number, got {obj.get('score')!r}"
    for key in ("scene", "camera", "first_frame", "last_frame"):
        if not isinstance(obj.get(key, ""), (str, type(None))):
            return f"{key} must be a string or null"
    for key in ("first_timestamp", "last_timestamp"):
        if obj.get(key) is not None and not scorefile.is_number(obj[key]):
            return f"{key} must be a number or null"
    dups = obj.get("near_duplicates", [])
    if not isinstance(dups, list) or not all(map(_good_duplicate, dups)):
        return ("near_duplicates must be a list of {clip_id: string, score and similarity: number or null, "
                f"reason: {' or '.join(DUP_REASONS)}}}")
    return None


def _good_duplicate(d):
    return isinstance(d, dict) and isinstance(d.get("clip_id"), str) and d.get("reason") in DUP_REASONS \
        and all(d.get(k) is None or scorefile.is_number(d[k]) for k in ("score", "similarity"))


def read_selection(path):
    """selection.jsonl from `make select` -> list of picks in rank order; UserError `file:line: what`."""
    picks, last_rank = [], 0
    for where, obj in read_jsonl(path, "selection file", " (write one with make select)"):
        problem = _pick_problem(obj, last_rank)
        if problem:
            raise cli.UserError(f"{where}: {problem}")
        last_rank = obj["rank"]
        picks.append({**obj, "scene": obj.get("scene") or "unknown", "camera": obj.get("camera") or "unknown",
                      "near_duplicates": obj.get("near_duplicates", [])})
    return picks


# ---- inputs ----

def unit_rows(x):
    """(B, D) -> (B, D) float64 rows of norm 1; a zero row stays zero (cosine 0 with everything)."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def finite_rows(emb, scores, rows, x):
    """x: (B, D) rows `rows`. Refuse a scored clip whose row holds NaN/inf (the two files disagree)."""
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        i = int(rows[bad[0]])
        raise cli.UserError(f"{emb.path}: row {i} is not finite but {scores.where(i)} ({scores.ids[i]!r}) "
                             f"has a score; use the two files of one make score run")
    return x


# ---- select ----

def walk_order(score, ids):
    """Rows with a score, highest first, ties by clip_id (eval.rank_order's order): (M,) int64."""
    valid = np.flatnonzero(~np.isnan(score))
    order = valid[np.argsort(-score[valid], kind="stable")]
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    tied = ends - starts > 1
    for a, b in zip(starts[tied], ends[tied]):  # sort only tied runs by clip_id: N strings would be slow
        order[a:b] = sorted(order[a:b], key=ids.__getitem__)
    return order


def greedy_select(order, emb, scores, top, max_similarity, per_scene, batch=WALK_BATCH):
    """Walk candidate rows `order` (M,) and pick up to `top`. Returns (picks, folded): picks = [row];
    folded = {pick position: [(row, cosine to that pick, "near_duplicate" | "scene_quota")]} in walk order.

    A near-duplicate is folded under its most similar pick; a clip over its scene's quota under the most
    similar pick of that scene. The candidates of a batch are compared with the earlier picks in one product
    and with this batch's picks through the batch's Gram matrix, so no candidate is read twice."""
    picks, folded, by_scene = [], defaultdict(list), defaultdict(list)
    vecs = np.empty((min(top, len(order)), emb.dim))  # the picks' unit vectors (TOP=10**20: as many as clips)
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        cand = unit_rows(finite_rows(emb, scores, rows, emb.take(rows)))
        to_earlier, gram, new = cand @ vecs[:len(picks)].T, cand @ cand.T, []
        for b, row in enumerate(rows):
            sims = np.concatenate([to_earlier[b], gram[b, new]])  # (len(picks),) cosine to each pick
            same = by_scene[int(scores.scene[row])]
            if len(sims) and sims.max() >= max_similarity:
                j = int(sims.argmax())
                folded[j].append((int(row), float(sims[j]), "near_duplicate"))
            elif per_scene and len(same) >= per_scene:
                j = same[int(sims[same].argmax())]
                folded[j].append((int(row), float(sims[j]), "scene_quota"))
            else:
                vecs[len(picks)] = cand[b]
                same.append(len(picks))
                picks.append(int(row))
                new.append(b)
                if len(picks) == top:
                    return picks, folded
    return picks, folded


def neighbour_cosines(emb, scores, rows):
    """Each of `rows` (K,)'s highest cosine to the other K rows: (K,) float64 (empty when K < 2)."""
    if len(rows) < 2:
        return np.empty(0)
    v = unit_rows(finite_rows(emb, scores, rows, emb.take(rows)))
    gram = v @ v.T
    np.fill_diagonal(gram, -np.inf)
    return gram.max(axis=1)


def cosine_summary(nn, max_similarity):
    """Quantiles of nearest-neighbour cosines and the share of clips with a neighbour at >= each threshold."""
    if not len(nn):
        return {}
    qs = {"min": 0, "p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9, "max": 1}
    return {"clips": len(nn), "quantiles": {k: round(float(np.quantile(nn, q)), 4) for k, q in qs.items()},
            "share_at_or_above": {str(t): round(float((nn >= t).mean()), 4)
                                  for t in sorted({*NN_THRESHOLDS, max_similarity})}}


def manifest_details(path, root, wanted):
    """{clip_id: (first frame, last frame, first timestamp, last timestamp)} for the ids in `wanted`, streamed
    through manifest.ManifestScan: a million-line manifest is never held. A line whose plain clip_id is not
    wanted is skipped unparsed (8x faster); lines with an escaped or derived clip_id are parsed."""
    from manifest import ManifestScan, clip_record  # the manifest's own rules (both styles, derived ids)
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"{path}: manifest not found (leave MANIFEST= out to select without frame "
                             f"details)")
    wanted_bytes = {c.encode() for c in wanted}

    def keep(raw):
        named = PLAIN_CLIP_ID.search(raw)
        return not named or named.group(1) in wanted_bytes

    scan, found = ManifestScan(path, root, tubelet_size=1, limit=1, keep=keep), {}
    for line, _, _, obj, clip_id, _ in scan:
        if clip_id in wanted:
            rec = clip_record(obj, line, scan.base, f"{path}:{line}")
            ts = rec["timestamps"] if isinstance(rec["timestamps"], list) else None
            ts = ts if ts and all(map(scorefile.is_timestamp, ts)) else [None]  # NaN, 1e300: no timestamps
            found[clip_id] = (rec["frames"][0], rec["frames"][-1], ts[0], ts[-1])
    if scan.problems:
        raise cli.UserError(f"{scan.problems[0]}; check the manifest with make check")
    return found


def phased_select(phases, emb, scores, max_similarity, per_scene):
    """greedy_select over several walks in turn, phases = [(order, n)]: each walk adds picks until there
    are n in all. Every walk starts with the picks so far (taken again unchanged), so folding and scene
    quotas hold across phases.
    Returns (picks, folded, phase of each pick)."""
    picks, folded, phase_of = [], defaultdict(list), []
    for phase, (order, n) in enumerate(phases):
        if n <= len(picks):
            continue
        taken = set(picks)
        walk = np.concatenate([np.asarray(picks, np.int64), [r for r in order if r not in taken]])
        new_picks, new_folded = greedy_select(walk.astype(np.int64), emb, scores, n,
                                              max_similarity, per_scene)
        phase_of += [phase] * (len(new_picks) - len(picks))
        picks = new_picks
        for j, items in new_folded.items():
            folded[j] += items
    chosen, out, seen = set(picks), defaultdict(list), set()
    for j in sorted(folded):
        for item in folded[j]:
            if item[0] not in chosen and item[0] not in seen:
                seen.add(item[0])
                out[j].append(item)
    return picks, out, phase_of


def mix_phases(score, p, ids, top, share):
    """The mix rule: E = round(share * top); first top - E picks by p_interesting (highest first); then E
    picks among the clips with 0.25 <= p <= 0.75, most novel (highest score) first; places left unfilled
    by either go back to p order. NaN in score or p = not a candidate."""
    explore = round(share * top)
    unsure = np.where((p >= 0.25) & (p <= 0.75), score, np.nan)
    by_p = walk_order(p, ids)
    return [(by_p, top - explore), (walk_order(unsure, ids), top), (by_p, top)]


def read_probe_rows(path, scores):
    """A learn OUT file as (N,) float64 p_interesting aligned with the scores rows (NaN where missing) and
    the set of rows it marks labelled."""
    from learn import read_probabilities
    got, labelled = read_probabilities(path), set()
    p = np.full(len(scores), np.nan)
    for i, clip in enumerate(scores.ids):
        v = got.get(clip, (None, None))
        if v[0] is not None:
            p[i] = v[0]
        if v[1] is not None:
            labelled.add(i)
    if np.isnan(p).all():
        raise cli.UserError(f"{path}: no p_interesting for any clip of {scores.path}; run make learn "
                            f"on these scores")
    # make learn writes a p_interesting for every clip with a score: a gap means other (older) scores
    missing = np.flatnonzero(np.isnan(p) & ~np.isnan(scores.score))
    if len(missing):
        raise cli.UserError(f"{path}: no p_interesting for {len(missing)} of the "
                            f"{int((~np.isnan(scores.score)).sum())} scored clips of {scores.path} (e.g. "
                            f"{scores.ids[int(missing[0])]!r}), so it was written for other scores; run "
                            f"learn.py apply --probe {path}.probe.npz --scores {scores.path} (or make learn)")
    return p, labelled


def pick_records(scores, picks, folded, details):
    """selection.jsonl's objects, one per pick in rank order."""
    out = []
    for rank, row in enumerate(picks, 1):
        obj = scores.line(row)
        first, last, t0, t1 = details.get(obj["clip_id"], (None, None, None, None))
        out.append({"rank": rank, "clip_id": obj["clip_id"], "scene": obj.get("scene", "unknown"),
                    "camera": obj.get("camera", "unknown"), "score": obj["score"],
                    "first_frame": obj.get("first_frame") or first, "last_frame": last,
                    "first_timestamp": t0, "last_timestamp": t1,
                    "near_duplicates": [{"clip_id": scores.ids[r], "score": float(scores.score[r]),
                                         "similarity": round(sim, scorefile.SCORE_DECIMALS), "reason": reason}
                                        for r, sim, reason in folded[rank - 1]]})
    return out


def csv_text(records):
    """selection.csv: the scalar columns of each pick plus its number of folded near-duplicates."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*PICK_COLUMNS, "near_duplicates"])
    for r in records:
        writer.writerow(["" if r[c] is None else r[c] for c in PICK_COLUMNS] + [len(r["near_duplicates"])])
    return buf.getvalue()


def label_metrics(scores, order, picks, labels, k_values):
    """The raw ranking and the selection side by side: eval.ranking_metrics (AP, P@K, ...) and the number of
    distinct scenes holding a positive among the first K clips. The selection ranks as its picks in order,
    then every other clip in score order (what a reviewer would see after the budget)."""
    from eval import ranking_metrics
    labelled = [i for i, c in enumerate(scores.ids)
                if labels.get(c) is not None and not np.isnan(scores.score[i])]
    raw = {scores.ids[i]: float(scores.score[i]) for i in labelled}
    above = float(np.nanmax(scores.score)) + 1 + len(picks)  # every pick ranks above every other clip
    rank_of = {row: r for r, row in enumerate(picks)}
    chosen = {scores.ids[i]: above - rank_of[i] if i in rank_of else float(scores.score[i]) for i in labelled}
    # the selection's first K clips, for K up to max(k_values): the picks, then the best clips not picked
    chosen_rows = picks + [r for r in order[:max(k_values) + len(picks)] if r not in rank_of]
    out = {}
    for name, ranking, rows in (("raw", raw, order), ("selection", chosen, chosen_rows)):
        m = ranking_metrics(ranking, labels, k_values)
        m["positive_scenes_at_k"] = {str(k): len({int(scores.scene[r]) for r in rows[:k]
                                                 if labels.get(scores.ids[r]) == 1}) for k in k_values}
        out[name] = m
    return out


def label_intervals(scores, picks, labels, k_values):
    """ranking.compare (AP and AUROC with 95% bootstrap intervals, paired differences, verdict) of the raw
    ranking ("trained") against the selection order and a random ranking, on the labelled scored clips."""
    import ranking
    rows = sorted((i for i, c in enumerate(scores.ids)
                   if labels.get(c) is not None and not np.isnan(scores.score[i])),
                  key=lambda i: scores.ids[i])
    above = float(np.nanmax(scores.score)) + 1 + len(picks)  # as label_metrics: picks rank above the rest
    rank_of = {row: r for r, row in enumerate(picks)}
    raw = np.array([scores.score[i] for i in rows], dtype=float)
    chosen = np.array([above - rank_of[i] if i in rank_of else scores.score[i] for i in rows], dtype=float)
    return ranking.compare({"trained": raw, "selection": chosen, "random": None},
                           np.array([labels[scores.ids[i]] for i in rows], dtype=int), k_values,
                           scenes=[int(scores.scene[i]) for i in rows],
                           clip_ids=[scores.ids[i] for i in rows])


def metrics_table(metrics, k_values):
    """Fixed-width text: one row per ranking, AP, P@K and positive scenes among the first K."""
    cols = ["AP"] + [f"P@{k}" for k in k_values] + [f"scenes@{k}" for k in k_values]
    lines = [f"{'ranking':<10}" + "".join(f"{c:>11}" for c in cols)]
    for name, m in metrics.items():
        vals = [m["average_precision"], *(m["precision_at_k"][str(k)] for k in k_values)]
        lines.append(f"{name:<10}" + "".join(f"{'-' if v is None else f'{v:.3f}':>11}" for v in vals)
                     + "".join(f"{m['positive_scenes_at_k'][str(k)]:>11}" for k in k_values))
    first = metrics["raw"]
    lines.append(f"({first['num_labelled']} labelled clips with a score, {first['num_positive']} positive; "
                 f"AP and P@K as in make eval; scenes@K = distinct scenes with a positive among the first K)")
    return "\n".join(lines)


def print_cosines(summary, max_similarity):
    if not summary:
        return
    q = "  ".join(f"{k} {v:.3f}" for k, v in summary["quantiles"].items())
    shares = ", ".join(f">= {t}: {v:.0%}" for t, v in summary["share_at_or_above"].items())
    print(f"nearest-neighbour cosine among the raw top {summary['clips']}: {q}\n"
          f"  share with a neighbour at {shares}  (max_similarity {max_similarity})")


def run_select(args, cfg):
    sel, out = cfg["selection"], Path(args.output)
    if out.suffix == ".csv":  # the CSV goes beside the JSONL under this very name
        raise cli.UserError(f"--output {out}: name the picks JSONL (e.g. selection.jsonl); the CSV is "
                             f"written beside it with a .csv suffix")
    cli.check_output(out, {"--scores": args.scores, "--manifest": args.manifest, "--labels": args.labels})
    scores = Scores(args.scores)
    emb = Embeddings(scores)
    if args.labels:
        from eval import read_labels
        labels = read_labels(args.labels)  # before the walk: a bad labels file fails fast
    rank_by = getattr(args, "rank_by", "score")
    score, p, skip = scores.score, None, set()
    if rank_by != "score" and not getattr(args, "probe", None):
        raise cli.UserError(f"--rank-by {rank_by} needs --probe (PROBE=) from make learn")
    if getattr(args, "probe", None):
        p, skip = read_probe_rows(args.probe, scores)
    if args.labels and rank_by != "score":  # with score, LABELS only measure the ranking (as before)
        skip |= {i for i, c in enumerate(scores.ids) if c in labels}
    if skip:  # clips already labelled are never picked again
        score = score.copy()
        score[list(skip)] = np.nan
    order = walk_order(score, scores.ids)
    if not len(order):
        raise cli.UserError(f"{scores.path}: no unlabelled clip has a score; nothing to select")
    phase_of = None
    if rank_by == "score":
        picks, folded = greedy_select(order, emb, scores, sel["top"], sel["max_similarity"],
                                      sel["per_scene"])
    else:
        p = np.where(np.isnan(score), np.nan, p)
        phases = [(walk_order(p, scores.ids), sel["top"])] if rank_by == "probe" else \
            mix_phases(score, p, scores.ids, sel["top"], sel["explore_share"])
        picks, folded, phase_of = phased_select(phases, emb, scores, sel["max_similarity"], sel["per_scene"])
    details = {} if not args.manifest else \
        manifest_details(args.manifest, args.data_root, {scores.ids[r] for r in picks})
    records = pick_records(scores, picks, folded, details)
    if p is not None:
        for r, row, ph in zip(records, picks, phase_of or [0] * len(picks)):
            r["p_interesting"] = None if np.isnan(p[row]) else float(p[row])
            r["picked_by"] = "explore" if rank_by == "mix" and ph == 1 else rank_by
    reasons = [reason for f in folded.values() for _, _, reason in f]
    meta = {"scores": str(scores.path), "embeddings": str(emb.path), "manifest": args.manifest,
            "rank_by": rank_by, "probe": getattr(args, "probe", None), "explore_share": sel["explore_share"],
            "skipped_labelled": len(skip),
            "top": sel["top"], "max_similarity": sel["max_similarity"], "per_scene": sel["per_scene"],
            "clips": len(scores), "scored": len(order), "picked": len(picks),
            "walked": len(picks) + len(reasons),
            "near_duplicate": reasons.count("near_duplicate"), "scene_quota": reasons.count("scene_quota"),
            "nearest_neighbour_cosine": cosine_summary(neighbour_cosines(emb, scores, order[:sel["top"]]),
                                                       sel["max_similarity"])}
    if args.labels:
        k_values = sorted({k for k in cfg["evaluation"]["k_values"] if k < sel["top"]} | {sel["top"]})
        meta["labels"] = args.labels
        meta["ranking"] = label_metrics(scores, order, picks, labels, k_values)
        meta["ranking"]["intervals"] = label_intervals(scores, picks, labels, k_values)
    cli.remove_earlier_set(out, out.with_suffix(".csv"), f"{out}.meta.json")
    cli.atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    cli.atomic_write_text(out.with_suffix(".csv"), csv_text(records))
    cli.atomic_write_text(f"{out}.meta.json", json.dumps(meta, indent=1) + "\n")

    for r in records[:10]:
        print(f"{r['rank']:>4}. {r['score']:.4f}  {r['clip_id']}  (+{len(r['near_duplicates'])} folded)")
    print_cosines(meta["nearest_neighbour_cosine"], sel["max_similarity"])
    if args.manifest and len(details) < len(picks):
        print(f"warning: {len(picks) - len(details)} picked clip(s) not in {args.manifest}: no last frame or "
              f"timestamps for them")
    if args.labels:
        print(metrics_table({k: meta["ranking"][k] for k in ("raw", "selection")}, k_values))
        import ranking
        print(ranking.format_table(meta["ranking"]["intervals"]))
        print("(labels taken from the top of this ranking bias these metrics upward; "
              "measure on make sample-for-labels labels)")
    print(f"picked {len(picks)} of {len(order)} scored clips, walking {meta['walked']}: folded "
          f"{meta['near_duplicate']} near-duplicates (cosine >= {sel['max_similarity']}) and "
          f"{meta['scene_quota']} over the scene quota ({sel['per_scene'] or 'none'}) -> {out}, "
          f"{out.with_suffix('.csv')}")
    if len(picks) < sel["top"]:
        print(short_words(meta))


def short_words(meta):
    """Why a selection has fewer picks than asked for (the walk reached the last scored clip)."""
    rest = meta["scored"] - meta["picked"]
    return (f"note: {meta['picked']} picks, not the {meta['top']} asked for: the batch ran out of "
            f"distinct clips; each of the other {rest} scored clips is a near-duplicate of a pick "
            f"({meta['near_duplicate']}) or over the scene quota ({meta['scene_quota']}), so the last "
            f"picks can score low. For more picks raise selection.max_similarity (now "
            f"{meta['max_similarity']}) or selection.per_scene (now {meta['per_scene'] or 'none'}), e.g. "
            f"ARGS=\"--set selection.max_similarity=0.99\", or score more clips")


# ---- similar ----

def nearest(emb, row, k, chunk_rows, ids):
    """The k rows with the highest cosine to `row` (itself left out): [(row, cosine)], highest first, ties by
    clip_id. A float32 pass over the file in chunks keeps 2k candidates; they are re-ranked in float64."""
    q32 = unit_rows(emb.take([row]))[0].astype(np.float32)
    keep = 2 * k
    best, best_sim = np.empty(0, np.int64), np.empty(0, np.float32)
    for start, chunk in emb.chunks(chunk_rows):
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        with np.errstate(invalid="ignore", divide="ignore"):
            sims = np.nan_to_num((chunk @ q32) / norms, nan=-np.inf, posinf=-np.inf, neginf=-np.inf)
        if start <= row < start + len(chunk):
            sims[row - start] = -np.inf
        cand = np.concatenate([best, start + np.arange(len(chunk))])
        cand_sim = np.concatenate([best_sim, sims])
        top = np.argpartition(-cand_sim, keep)[:keep] if len(cand) > keep else np.arange(len(cand))
        best, best_sim = cand[top], cand_sim[top]
    best = best[np.isfinite(best_sim)]  # failed clips (NaN rows) and zero rows have no cosine
    exact = unit_rows(emb.take(best)) @ unit_rows(emb.take([row]))[0]
    ranked = sorted(zip(best.tolist(), exact.tolist()), key=lambda rs: (-rs[1], ids[rs[0]]))
    return ranked[:k]


def run_similar(args, cfg):
    sel, out = cfg["selection"], Path(args.output)
    cli.check_output(out, {"--scores": args.scores})
    scores = Scores(args.scores)
    emb = Embeddings(scores)
    row = scores.find(args.clip)
    if not np.isfinite(emb.take([row])).all():
        raise cli.UserError(f"{scores.where(row)}: clip {args.clip!r} has no embedding (its scoring "
                             f"failed); pick a scored clip")
    found = [(row, 1.0)] + nearest(emb, row, sel["similar_k"], emb.chunk_rows(sel["chunk_mb"]), scores.ids)
    records = []
    for rank, (r, sim) in enumerate(found):
        obj = scores.line(r)
        records.append({"rank": rank, "clip_id": obj["clip_id"], "scene": obj.get("scene", "unknown"),
                        "camera": obj.get("camera", "unknown"), "score": obj.get("score"),
                        "similarity": round(sim, scorefile.SCORE_DECIMALS),
                        "first_frame": obj.get("first_frame")})
        score = "failed" if obj.get("score") is None else f"{obj['score']:.4f}"
        print(f"{rank:>4}. cosine {sim:.4f}  score {score:>7}  {obj['clip_id']}")
    cli.atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(found) - 1} nearest clips to {args.clip} of {len(scores)} -> {out}")


# ---- command line ----

def parse_args(argv=None):
    commands = {"select": "pick clips for labelling, folding near-duplicates (make select)",
                "similar": "the clips nearest to one clip by cosine (make similar)"}
    p, (s, m) = cli.scores_commands(__doc__, "scores JSONL from make score; S.emb.npy must lie beside it",
                                    **commands)
    cli.add_clip_inputs(s, "last frames and timestamps (default: none, those fields are null)",
                        "compare the raw ranking and the selection")
    cli.add_config_flags(s, ["top"])
    s.add_argument("--rank-by", choices=("score", "probe", "mix"), default="score",
                   help="score: novelty; probe: p_interesting; mix: p_interesting with "
                   "selection.explore_share of the batch for the most novel clips the probe is unsure about "
                   "(default: score)")
    s.add_argument("--probe", help="p_interesting JSONL from make learn (needed by --rank-by probe|mix)")
    s.add_argument("--output", default="selection.jsonl", help="picks JSONL; the CSV and OUT.meta.json go "
                   "beside it (default: selection.jsonl)")
    m.add_argument("--clip", required=True, help="clip_id of the clip to find neighbours of")
    cli.add_config_flags(m, ["k"])
    m.add_argument("--output", default="similar.jsonl", help="neighbours JSONL (default: similar.jsonl)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = cli.load_config(args.config, args.set, **cli.config_flags(args))
    return run_select(args, cfg) if args.command == "select" else run_similar(args, cfg)


if __name__ == "__main__":
    cli.run_cli(main)
