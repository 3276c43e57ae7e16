"""Ranking metrics, bootstrap intervals and an honest verdict (numpy only, no torch).

eval.py, report.py and selection.py present these metrics. `compare` ranks the same labelled clips by several
methods (e.g. trained, masked_gap, random, untrained_head, knn_density) and returns, per method, AP, AUROC,
P@K, R@K and NDCG@K with 95% bootstrap intervals, the paired difference reference - baseline on the same
resamples, and a verdict that never claims a win the interval does not support. `format_table` prints it.
"""
import math

import numpy as np

MIN_POSITIVES = 10  # fewer positive labels: the verdict is "too few labels"
SCENE_UNIT_MIN = 5  # labelled clips spanning at least this many scenes: resample whole scenes


# ---- point metrics on {clip_id: score} / {clip_id: label} dicts ----

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


def random_ap(n, pos):
    """Exact expected AP of a uniformly random order of n clips, pos of them positive (array-friendly):
    (H_n + (n - H_n)(pos - 1)/(n - 1)) / n with H_n the n-th harmonic number; 1 when n == 1."""
    n, pos = np.asarray(n, dtype=float), np.asarray(pos, dtype=float)
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max(initial=0)) + 1))])
    h_n = table[n.astype(int)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(n > 1, (h_n + (n - h_n) * (pos - 1) / np.maximum(n - 1, 1)) / np.maximum(n, 1), 1.0)
    return np.where(pos > 0, ap, np.nan)


def random_baseline(labels, k_values):
    """Exact expected ranking_metrics of a uniformly random ranking of the same clips.

    `labels`: {clip_id: 0 | 1 | None} of the scored clips (None: unlabelled, left out). A random order of all
    scored clips puts the labelled ones in a random order, so only n (labelled) and the positive count
    matter. Expected AP is exact, not the positive rate it tends to for large n:
    (H_n + (n - H_n)(pos - 1)/(n - 1)) / n with H_n the n-th harmonic number."""
    rel = [v for v in labels.values() if v is not None]
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


def auroc(scores, labels):
    """Area under the ROC curve: P(a positive outscores a negative), ties counted half (average ranks, the
    Mann-Whitney U). None without both classes."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return None
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    ranks = np.empty(len(s))
    ranks[order] = _average_ranks(s)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _average_ranks(sorted_scores):
    """1-based ranks of ascending sorted scores, tied runs given their average rank."""
    n = len(sorted_scores)
    start, end = _tie_bounds(sorted_scores)
    return (start + end + 1) / 2.0 if n else np.zeros(0)


def _tie_bounds(sorted_scores):
    """For each position of a sorted array, the first position of its tied run and one past its last."""
    n = len(sorted_scores)
    new = np.ones(n, dtype=bool)
    new[1:] = sorted_scores[1:] != sorted_scores[:-1]
    first = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    stop = np.append(first[1:], n)
    return first[run], stop[run]


# ---- weighted (bootstrap) versions: W is (B, n) integer counts, one row per resample ----

def _weighted_ap(order_scores_desc_labels, weights):
    """AP of each resample: clips fixed in the point ranking order (labels `y` in that order), resample b
    holding weights[b, i] copies of clip i. Copies of a clip are adjacent; a positive with w copies after
    a hits among t clips contributes sum_j (a + j)/(t + j) = w - (t - a)(H[t + w] - H[t]). Only the
    positives' columns are gathered after the one cumulative sum."""
    pos_cols = np.flatnonzero(order_scores_desc_labels)
    total = np.cumsum(weights, axis=1)[:, pos_cols]  # clips up to and including each positive
    wp = weights[:, pos_cols]
    hits = np.cumsum(wp, axis=1)
    before_t, before_a = total - wp, hits - wp
    h = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(weights.sum(axis=1).max()) + 1))])
    contrib = wp - (before_t - before_a) * (h[total.astype(np.int64)] - h[before_t.astype(np.int64)])
    pos = wp.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pos > 0, contrib.sum(axis=1) / pos, np.nan)


def _weighted_auroc(sorted_labels, start, stop, weights):
    """AUROC of each resample; clips in ascending score order with tie runs [start, stop)."""
    pos_cols = np.flatnonzero(sorted_labels)
    neg_w = weights * (1 - sorted_labels)
    cum = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(neg_w, axis=1)], axis=1)
    below = cum[:, start[pos_cols]]
    tied = cum[:, stop[pos_cols]] - below
    pos_w = weights[:, pos_cols]
    p, n = pos_w.sum(axis=1), cum[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((p > 0) & (n > 0), (pos_w * (below + 0.5 * tied)).sum(axis=1) / (p * n), np.nan)


def _resample_weights(rng, n, groups, resamples):
    """(resamples, n) counts: clip i appears counts[b, i] times in resample b. `groups` None resamples clips;
    otherwise an int array of group (scene) indices and whole groups are resampled."""
    if groups is None:
        idx = rng.integers(0, n, size=(resamples, n))
        flat = (idx + n * np.arange(resamples)[:, None]).ravel()
        return np.bincount(flat, minlength=resamples * n).reshape(resamples, n)
    g = int(groups.max()) + 1
    idx = rng.integers(0, g, size=(resamples, g))
    flat = (idx + g * np.arange(resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=resamples * g).reshape(resamples, g)
    return counts[:, groups]


def _interval(values):
    v = values[~np.isnan(values)]
    if not len(v):
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


# ---- the comparison ----

def compare(method_scores, labels, k_values, scenes=None, reference="trained", seed=0, resamples=1000,
            clip_ids=None, chunk=100):
    """Rank the same labelled clips by each method and compare `reference` with every other method.

    method_scores: {name: array of n scores, higher = more novel}; the value None for "random" means the
    exact expected random ranking (AUROC 0.5, AP from random_ap on each resample). labels: n values in {0, 1}.
    scenes: n scene names (None: each clip its own); clip_ids: n ids for tie-breaking (default: position).
    Bootstrap: `resamples` seeded resamples of whole scenes when the clips span >= 5 scenes, else of clips;
    every method and difference is computed on the same resamples, `chunk` resamples at a time.
    Returns the `ranking` JSON block (see README, evaluation)."""
    labels = np.asarray(labels).astype(int)
    n, pos = len(labels), int(labels.sum())
    ids = list(range(n)) if clip_ids is None else list(clip_ids)
    label_of = dict(zip(ids, labels.tolist()))
    scene_arr = None if scenes is None else np.asarray([str(s) for s in scenes])
    unit, groups = "clip", None
    if scene_arr is not None and len(set(scene_arr.tolist())) >= SCENE_UNIT_MIN:
        unit = "scene"
        groups = np.unique(scene_arr, return_inverse=True)[1].ravel()
    id_rank = np.argsort(np.argsort(np.asarray(ids, dtype=object if clip_ids is not None else int)))
    result, prepared = {}, {}
    for name, s in method_scores.items():
        if s is None:
            block = random_baseline(label_of, k_values)
            block["auroc"] = 0.5 if pos and pos < n else None
            prepared[name] = None
        else:
            s = np.asarray(s, dtype=float)
            block = ranking_metrics(dict(zip(ids, s.tolist())), label_of, k_values)
            block["auroc"] = auroc(s, labels)
            desc = np.lexsort((id_rank, -s))  # the ranking_metrics order
            asc = np.argsort(s, kind="stable")
            start, stop = _tie_bounds(s[asc])
            prepared[name] = (desc, asc, start, stop)
        result[name] = block
    rng = np.random.default_rng(seed)
    draws = {name: {"average_precision": [], "auroc": []} for name in method_scores}
    for done in range(0, resamples if n else 0, chunk):  # no labelled clips: nothing to resample
        w = _resample_weights(rng, n, groups, min(chunk, resamples - done)).astype(float)
        for name, prep in prepared.items():
            if prep is None:
                wn, wp = w.sum(axis=1), (w * labels).sum(axis=1)
                draws[name]["average_precision"].append(random_ap(wn, wp))
                draws[name]["auroc"].append(np.where((wp > 0) & (wp < wn), 0.5, np.nan))
                continue
            desc, asc, start, stop = prep
            draws[name]["average_precision"].append(_weighted_ap(labels[desc], w[:, desc]))
            draws[name]["auroc"].append(_weighted_auroc(labels[asc], start, stop, w[:, asc]))
    draws = {m: {k: np.concatenate(v) if v else np.zeros(0) for k, v in d.items()} for m, d in draws.items()}
    for name in method_scores:
        result[name]["ci"] = {k: _interval(v) for k, v in draws[name].items()}
    differences = {}
    if reference in method_scores:
        for name in method_scores:
            if name != reference:
                differences[name] = _difference(result, draws, reference, name, n, pos)
    result["differences"] = differences
    result["bootstrap"] = {"resamples": resamples, "unit": unit, "seed": seed}
    result["warnings"] = confound_warnings(labels, scene_arr)
    result["verdict"] = _verdict_text(result, method_scores, reference, n, pos)
    return result


def _difference(result, draws, reference, name, n, pos):
    """Paired difference reference - name of AP (and AUROC) over the shared resamples, with a verdict."""
    out = {}
    for metric in ("average_precision", "auroc"):
        a, b = result[reference][metric], result[name][metric]
        ci = _interval(draws[reference][metric] - draws[name][metric])
        mean = None if a is None or b is None else a - b
        low, high = (None, None) if ci is None else ci
        out[metric] = {"mean": mean, "low": low, "high": high}
    d = out["average_precision"]
    if pos < MIN_POSITIVES or d["mean"] is None or d["low"] is None:
        out["verdict"] = "too few labels"
        out["labels_needed"] = _labels_needed(d, n, pos)
    elif d["low"] > 0:
        out["verdict"] = "better"
    elif d["high"] < 0:
        out["verdict"] = "worse"
    else:
        out["verdict"] = "not distinguishable"
    return out


def _labels_needed(d, n, pos):
    """Rough labelled clips (and positives) for the observed AP difference to clear its 95% interval: the
    interval's half-width shrinks like 1/sqrt(labels), so n * (half-width / |difference|)^2 at the same
    positive rate. None when there is no difference or interval to scale."""
    if d["mean"] is None or d["low"] is None or not d["mean"] or n == 0:
        return None
    half = (d["high"] - d["low"]) / 2
    factor = max(1.0, (half / abs(d["mean"])) ** 2)
    need_pos = max(MIN_POSITIVES, math.ceil(pos * factor))
    return {"labelled": max(math.ceil(n * factor), math.ceil(need_pos * n / max(pos, 1))),
            "positives": need_pos,
            "how": "n * (interval half-width / |observed AP difference|)^2 at the same positive rate, "
                   f"at least {MIN_POSITIVES} positives; the half-width shrinks like 1/sqrt(n)"}


def confound_warnings(labels, scenes):
    """Warnings when positives concentrate in one scene (> half of them) or a scene whose labelled clips are
    all positive holds >= 25% of them: the ranking may be finding the scene rather than the event."""
    labels = np.asarray(labels).astype(int)
    pos = int(labels.sum())
    if scenes is None or pos < 2:
        return []
    out = []
    for scene in sorted(set(scenes.tolist())):
        mask = scenes == scene
        p = int(labels[mask].sum())
        if p > pos / 2:
            out.append(f"scene {scene!r} holds {p} of the {pos} positives (more than half): the ranking may "
                       "be finding the scene rather than the event")
        elif p == int(mask.sum()) and p >= 0.25 * pos:
            out.append(f"scene {scene!r}: all {p} of its labelled clips are positive and it holds "
                       f"{p / pos:.0%} of the positives: the ranking may be finding the scene rather than "
                       "the event")
    return out


def _verdict_text(result, method_scores, reference, n, pos):
    aps = {m: result[m]["average_precision"] for m in method_scores
           if result[m]["average_precision"] is not None}
    if not aps:
        return f"no positive labels among the {n} labelled clips, so there is nothing to rank"
    best = max(aps, key=lambda m: (aps[m], m == reference))
    lines = [f"best by AP: {best} ({aps[best]:.3f}) on {n} labelled clips ({pos} positive)"]
    for name, d in result["differences"].items():
        ap = d["average_precision"]
        if d["verdict"] == "too few labels":
            need = d.get("labels_needed")
            tail = ("; no observed AP difference to scale" if need is None
                    else f"; roughly {need['labelled']} labelled clips "
                    f"({need['positives']} positive) would be needed for a difference of {ap['mean']:+.3f} "
                    "(n * (interval half-width / |difference|)^2)")
            lines.append(f"{reference} vs {name}: too few labels to tell ({pos} positive, "
                         f"need >= {MIN_POSITIVES}){tail}")
            continue
        ci = f"AP difference {ap['mean']:+.3f}, 95% interval [{ap['low']:+.3f}, {ap['high']:+.3f}]"
        word = {"better": "better", "worse": "worse",
                "not distinguishable": f"not distinguishable on these {n} labelled clips ({pos} positive)"}
        lines.append(f"{reference} vs {name}: {word[d['verdict']]} ({ci})")
    return "\n".join(lines)


def format_table(result):
    """The ranking block as fixed-width text: per method AP and AUROC with 95% intervals, P/R/NDCG@K, then the
    differences, warnings and verdict."""
    methods = [m for m in result if isinstance(result[m], dict) and "average_precision" in result[m]]
    if not methods:
        return result.get("verdict", "")
    k_values = list(result[methods[0]]["precision_at_k"])
    width = max([len("method")] + [len(m) for m in methods])
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda c: "" if c is None else f"[{c[0]:.3f},{c[1]:.3f}]"  # noqa: E731
    cols = [f"{m}@{k}" for k in k_values for m in ("P", "R", "NDCG")]
    lines = [f"{'method':<{width}}{'AP':>7}{'95% CI':>16}{'AUROC':>7}{'95% CI':>16}"
             + "".join(f"{c:>9}" for c in cols)]
    for m in methods:
        b = result[m]
        vals = [b[f"{key}_at_k"].get(k) for k in k_values for key in ("precision", "recall", "ndcg")]
        lines.append(f"{m:<{width}}{fmt(b['average_precision']):>7}{ci(b['ci']['average_precision']):>16}"
                     f"{fmt(b['auroc']):>7}{ci(b['ci']['auroc']):>16}"
                     + "".join(f"{fmt(v):>9}" for v in vals))
    bs = result.get("bootstrap", {})
    first = result[methods[0]]
    lines.append(f"({first['num_labelled']} labelled clips, {first['num_positive']} positive; 95% intervals "
                 f"from {bs.get('resamples')} bootstrap resamples of {bs.get('unit')}s, "
                 f"seed {bs.get('seed')}; "
                 "'-' = undefined)")
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    lines.append(result.get("verdict", ""))
    return "\n".join(lines)


# ---- baselines and sampling ----

def knn_density(query_emb, train_emb, k, chunk=4096):
    """1 - mean of each query's top-k cosine similarities to the training embeddings (higher = farther from
    the training clips = more novel). Both sides are L2-normalised; the training side is read `chunk` rows
    at a time (a np.load(mmap_mode="r") array works), queries `chunk` at a time, so memory stays
    ~chunk * (chunk + k) floats. k larger than the training set uses all of it."""
    q_all = np.asarray(query_emb, dtype=np.float32)
    n_train = len(train_emb)
    if n_train == 0:
        raise ValueError("knn_density needs at least one training embedding")
    k = min(int(k), n_train)
    out = np.empty(len(q_all))
    for qs in range(0, len(q_all), chunk):
        q = q_all[qs:qs + chunk]
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        best = np.full((len(q), 0), -np.inf, dtype=np.float32)
        for ts in range(0, n_train, chunk):
            t = np.asarray(train_emb[ts:ts + chunk], dtype=np.float32)
            t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
            both = np.concatenate([best, q @ t.T], axis=1)
            if both.shape[1] > k:
                both = np.partition(both, both.shape[1] - k, axis=1)[:, -k:]
            best = both
        out[qs:qs + chunk] = 1.0 - best.astype(np.float64).mean(axis=1)
    return out


def stratified_sample(scenes, n, seed):
    """Indices of a seeded random sample of n clips, stratified by scene: each scene gets its proportional
    share (largest remainders, ties by scene name, round up), clips drawn without replacement within it.
    n >= len(scenes) returns every index. Sorted ascending."""
    scenes = [str(s) for s in scenes]
    total = len(scenes)
    if n >= total:
        return list(range(total))
    by_scene = {}
    for i, s in enumerate(scenes):
        by_scene.setdefault(s, []).append(i)
    names = sorted(by_scene)
    quota = {s: n * len(by_scene[s]) / total for s in names}
    take = {s: int(quota[s]) for s in names}
    for s in sorted(names, key=lambda s: (-(quota[s] - take[s]), s))[:n - sum(take.values())]:
        take[s] += 1
    rng = np.random.default_rng(seed)
    picked = []
    for s in names:
        rows = by_scene[s]
        picked += [rows[j] for j in rng.choice(len(rows), size=take[s], replace=False)]
    return sorted(picked)
