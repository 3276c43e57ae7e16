"""Learn from the reviewers: fit a probe on the frozen clip embeddings of the labelled clips and score every
clip with the probability that a reviewer would call it interesting.

Usage:
  python learn.py fit --scores S --labels L1 [L2 ...] [--output S-dir/probe.jsonl]
  python learn.py apply --probe P.probe.npz --scores S2 --output O
  make learn SCORES=S LABELS="round1.jsonl round2.jsonl" [OUT=probe.jsonl beside SCORES]

Inputs: the scores JSONL S with S.emb.npy and S.meta.json beside it (make score), and labels JSONL files
{"clip_id", "binary_label": 0 | 1 | null} (eval.py's format, which the review page exports). Several files
merge by clip_id, later files winning; clips whose label changes between files are listed in a warning.

The probe: L2-regularised logistic regression (numpy, Newton's method) on the embeddings standardised by the
mean and standard deviation of all clips of S, classes balanced (each class weighs half), the bias not
penalised. The strength C (objective 0.5 |w|^2 + C * sum_i weight_i * logloss_i) is chosen from C_GRID by
scene-grouped FOLDS-fold cross-validation on the balanced log loss (no scene in two folds). Deterministic:
folds come from a seeded shuffle of the scenes.

Writes OUT (JSONL, one line per clip of S: clip_id, p_interesting rounded to 6 decimals, labelled 0|1|null),
OUT.probe.npz (mean, std, weights, bias, C, encoder fingerprint, scores path; np.load(allow_pickle=False)
reads it) and OUT.meta.json (labels, counts, conflicts, the CV losses, the honest report).
Embeddings are read in pieces of about selection.chunk_mb, never whole.
"""
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

import cli
import ranking
from scorefile import Embeddings, Scores, read_meta

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
FOLDS = 5
MIN_PER_CLASS = 5
SEED = 0
P_DECIMALS = 6
STATS_ROWS = 1024  # rows per float64 block in column_stats (8 MB at D=1024)


# ---- labels ----

def merge_labels(paths):
    """Read label files in order, later ones winning. Returns (labels {clip_id: 0|1|None}, conflicts
    [(clip_id, [(path, label)])] for clips whose label differs between files)."""
    from eval import read_labels
    merged, seen = {}, {}
    for path in paths:
        for clip, label in read_labels(path).items():
            seen.setdefault(clip, []).append((str(path), label))
            merged[clip] = label
    conflicts = [(c, v) for c, v in seen.items() if len({lab for _, lab in v}) > 1]
    return merged, conflicts


def print_conflicts(conflicts):
    if not conflicts:
        return
    print(f"warning: {len(conflicts)} clip(s) labelled differently in two files; the later file wins:",
          file=sys.stderr)
    for clip, v in conflicts[:20]:
        print(f"  {clip}: " + ", ".join(f"{p}={lab}" for p, lab in v), file=sys.stderr)
    if len(conflicts) > 20:
        print(f"  ... and {len(conflicts) - 20} more (all in OUT.meta.json)", file=sys.stderr)


# ---- the logistic regression ----

def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|


def balanced_weights(y):
    """Each class weighs half of the total: weight n / (2 n_class)."""
    y = np.asarray(y)
    n, pos = len(y), int(y.sum())
    return np.where(y == 1, n / (2.0 * max(pos, 1)), n / (2.0 * max(n - pos, 1)))


def objective(w, b, x, y, s, c):
    z = x @ w + b
    loss = np.logaddexp(0.0, z) - y * z
    return 0.5 * float(w @ w) + c * float(s @ loss)


def fit_logistic(x, y, c, sample_weight=None, tol=1e-10, max_iter=100):
    """Minimise 0.5 |w|^2 + C * sum_i s_i (log(1 + e^z_i) - y_i z_i), z = x w + b, by Newton's method with
    a backtracking line search. x: (n, D) float64, y: (n,) 0/1. Returns (w (D,), b)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, d = x.shape
    s = balanced_weights(y) if sample_weight is None else np.asarray(sample_weight, np.float64)
    xa = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.r_[np.ones(d), 0.0]  # the bias is not penalised
    f = objective(theta[:d], theta[d], x, y, s, c)
    for _ in range(max_iter):
        p = sigmoid(xa @ theta)
        grad = reg * theta + c * xa.T @ (s * (p - y))
        if np.abs(grad).max() < tol * max(1.0, c * s.sum()):
            break
        h = (xa.T * (c * s * p * (1 - p))) @ xa
        h[np.diag_indices_from(h)] += reg + 1e-12
        step = np.linalg.solve(h, grad)
        t = 1.0
        while True:
            new = theta - t * step
            f_new = objective(new[:d], new[d], x, y, s, c)
            if f_new <= f - 1e-4 * t * float(grad @ step) or t < 1e-10:
                break
            t *= 0.5
        if f - f_new <= 1e-15 * max(1.0, abs(f)):
            theta, f = new, f_new
            break
        theta, f = new, f_new
    return theta[:d], float(theta[d])


def balanced_log_loss(y, p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return 0.5 * float(-np.log(p[y == 1]).mean()) + 0.5 * float(-np.log(1 - p[y == 0]).mean())


def scene_folds(groups, k=FOLDS, seed=SEED):
    """(n,) fold index per clip; every clip of one group (scene) in one fold. Groups are shuffled with the
    seed, then dealt largest first to the fold with fewest clips. With fewer than k groups: one fold per
    group; with a single group: clips dealt round-robin (no scene grouping possible, see the warning)."""
    groups = np.asarray(groups)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) == 1:
        return np.arange(len(groups)) % k
    k = min(k, len(names))
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of, sizes = np.empty(len(names), np.int64), np.zeros(k, np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of[g], sizes[f] = f, sizes[f] + counts[g]
    return fold_of[inverse]


def cv_predict(x, y, folds, c):
    """Out-of-fold probabilities (n,): each fold scored by a probe fitted on the others. A training part
    with one class only predicts that class's share of it."""
    p = np.empty(len(y))
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        if len(np.unique(y[train])) < 2:
            p[test] = y[train].mean() if train.any() else 0.5
            continue
        w, b = fit_logistic(x[train], y[train], c)
        p[test] = sigmoid(x[test] @ w + b)
    return p


def choose_c(x, y, folds, grid=C_GRID):
    """(best C, {C: balanced CV log loss}, out-of-fold probabilities at the best C). Ties: the smaller C."""
    losses, preds = {}, {}
    for c in grid:
        preds[c] = cv_predict(x, y, folds, c)
        losses[c] = balanced_log_loss(y, preds[c])
    best = min(grid, key=lambda c: (round(losses[c], 12), c))
    return best, losses, preds[best]


# ---- embeddings ----

def check_scored_rows(emb, scores, start, chunk):
    """Refuse a clip with a score whose embedding row holds NaN or infinity: only a failed clip (no score)
    has a NaN row, so the two files are not of one make score run (or one was edited)."""
    ok = np.isfinite(chunk).all(axis=1)
    bad = np.flatnonzero(~ok & ~np.isnan(scores.score[start:start + len(chunk)]))
    if len(bad):
        i = start + int(bad[0])
        raise cli.UserError(f"{emb.path}: row {i} is not finite but {scores.where(i)} has a score; use the "
                            f"two files of one make score run")
    return ok


def column_stats(emb, chunk_rows, scores):
    """Mean and standard deviation (float64, (D,)) of the finite rows, in one streamed pass."""
    total, sq, n = np.zeros(emb.dim), np.zeros(emb.dim), 0
    for chunk_start, chunk in emb.chunks(chunk_rows):
        ok = check_scored_rows(emb, scores, chunk_start, chunk)
        for start in range(0, len(chunk), STATS_ROWS):  # float64 copies of a few MB, not of the whole chunk
            x = chunk[start:start + STATS_ROWS][ok[start:start + STATS_ROWS]].astype(np.float64)
            total += x.sum(axis=0)
            sq += np.einsum("ij,ij->j", x, x)
            n += len(x)
    if n == 0:
        raise cli.UserError(f"{emb.path}: no finite embedding (every clip failed); score the clips again")
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))
    return mean, np.where(std > 1e-12, std, 1.0)


def probabilities(emb, probe, chunk_rows, scores):
    """(N,) float64 p_interesting for every row; NaN where the embedding is not finite (a failed clip)."""
    p = np.full(emb.n, np.nan)
    w32 = (probe["weights"] / probe["std"]).astype(np.float32)
    shift = float(probe["bias"] - (probe["mean"] / probe["std"]) @ probe["weights"])
    for start, chunk in emb.chunks(chunk_rows):
        check_scored_rows(emb, scores, start, chunk)
        z = chunk @ w32 + shift
        p[start:start + len(chunk)] = sigmoid(z.astype(np.float64))
    return p


def write_probabilities(out, scores, p, labels):
    """OUT: one {"clip_id", "p_interesting", "labelled"} line per clip of `scores`, in its order. Lines are
    formatted by hand (json.dumps of the id only): a dict per line made a 1M-clip write take 15 s."""
    as_json = {None: "null", 0: "0", 1: "1"}
    rounded = [round(v, P_DECIMALS) for v in p.tolist()]  # Python round, as before: the same digits

    def write(f):
        buf = []
        for clip, v in zip(scores.ids, rounded):
            value = "null" if v != v else repr(v)  # v != v: NaN, a failed clip
            buf.append(f'{{"clip_id": {json.dumps(clip)}, "p_interesting": {value}, '
                       f'"labelled": {as_json[labels.get(clip)]}}}\n')
            if len(buf) >= 10000:
                f.write("".join(buf).encode())
                buf = []
        f.write("".join(buf).encode())
    cli.atomic_write(out, write)


def read_probabilities(path):
    """A learn OUT file -> {clip_id: (p_interesting (float or None), labelled (0, 1 or None))}."""
    from manifest import read_jsonl
    if str(path).endswith(".probe.npz"):
        raise cli.UserError(f"{path}: is the probe's weights; pass the p_interesting JSONL beside it "
                            f"({str(path)[:-len('.probe.npz')]}), or use it with learn.py apply")
    got, problems = {}, []
    for where, obj in read_jsonl(path, "probe file", " (write one with make learn)"):
        p = obj.get("p_interesting")
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1):
            problems.append(f"{where}: p_interesting must be a number in [0, 1] or null, got {p!r}; "
                            f"write the file again with make learn")
        got[obj["clip_id"]] = (p, obj.get("labelled"))
    if problems:
        raise cli.UserError("\n".join(problems))
    return got


def fingerprint_of(scores):
    meta = read_meta(scores.path)
    return meta.get("encoder_fingerprint"), meta.get("embed_dim")


def load_probe(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            probe = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # EOFError: empty; BadZipFile: torn
        raise cli.UserError(f"{path}: not a probe file ({e}); write one with make learn")
    missing = {"mean", "std", "weights", "bias", "encoder_fingerprint"} - set(probe)
    if missing:
        raise cli.UserError(f"{path}: not a probe file (missing {', '.join(sorted(missing))}); write one "
                            f"with make learn")
    vectors = [probe[k] for k in ("mean", "std", "weights")]
    if not all(v.ndim == 1 and v.dtype.kind == "f" and len(v) == len(vectors[0]) for v in vectors) \
            or probe["bias"].shape != () or probe["bias"].dtype.kind != "f" \
            or probe["encoder_fingerprint"].shape != () or probe["encoder_fingerprint"].dtype.kind != "U":
        raise cli.UserError(f"{path}: not a probe file (mean, std and weights must be float vectors of one "
                            f"length, bias a float, encoder_fingerprint text); write one with make learn")
    if not all(np.isfinite(v).all() for v in vectors) or not np.isfinite(probe["bias"]) \
            or not (probe["std"] > 0).all():
        raise cli.UserError(f"{path}: holds NaN, infinity or a std <= 0; not a usable probe (fit it again "
                            f"with make learn)")
    probe["bias"] = float(probe["bias"])
    probe["encoder_fingerprint"] = str(probe["encoder_fingerprint"])
    return probe


def check_encoder(probe, probe_path, scores, emb):
    fp, _ = fingerprint_of(scores)
    want = probe["encoder_fingerprint"]
    if fp is not None and want and fp != want:
        raise cli.UserError(f"{probe_path}: fitted on embeddings of encoder {want}, but {scores.path} was "
                            f"scored with encoder {fp}; fit a probe on these scores with make learn")
    if len(probe["weights"]) != emb.dim:
        raise cli.UserError(f"{probe_path}: fitted on {len(probe['weights'])}-d embeddings, but "
                            f"{emb.path} holds {emb.dim}-d rows; fit a probe on these scores with make "
                            f"learn")


# ---- the honest report ----

class RowsView:
    """Rows `rows` of the embeddings as a sliceable (len(rows), D) array read on demand, so knn_density's
    chunked passes hold one chunk of the reference sample at a time, not all 20,000 rows (86 MB)."""

    def __init__(self, emb, rows):
        self.emb, self.rows = emb, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, part):
        return self.emb.take(self.rows[part]).astype(np.float32)


def honest_report(scores, rows, y, cv_p, emb, chunk_rows, k_values, seed=SEED):
    """CV-predicted probabilities of the probe beside the novelty score, knn_density and random on the same
    labelled clips, through ranking.compare (the ranking-trust machinery eval.py uses)."""
    novelty = scores.score[rows]
    keep = ~np.isnan(novelty)
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.flatnonzero(~np.isnan(scores.score)), rows)
    sample = np.sort(rng.choice(others, min(20000, len(others)), replace=False)) if len(others) else others
    ref = np.concatenate([rows, sample])
    query = emb.take(rows).astype(np.float32)
    k = min(10, len(ref) - 1)
    density = ranking.knn_density(query, RowsView(emb, ref), k + 1)  # each clip is in ref: k + 1 skips it
    methods = {"probe": cv_p[keep], "novelty": novelty[keep], "knn_density": np.asarray(density)[keep],
               "random": None}  # None: the exact expectation of a random ranking
    scenes = np.array([scores.scene_names[s] for s in scores.scene[rows]])[keep]
    result = ranking.compare(methods, y[keep].astype(int), k_values, scenes=scenes, reference="probe",
                             seed=seed)
    return result, ranking.format_table(result)


# ---- commands ----

def run_fit(args, cfg):
    out = Path(args.output)
    cli.check_output(out, {"--scores": args.scores, **{f"--labels {p}": p for p in args.labels}})
    labels, conflicts = merge_labels(args.labels)
    print_conflicts(conflicts)
    scores = Scores(args.scores)
    emb = Embeddings(scores)
    chunk_rows = emb.chunk_rows(cfg["selection"]["chunk_mb"])
    mean, std = column_stats(emb, chunk_rows, scores)  # first: it refuses rows that disagree with S
    wanted = {c: lab for c, lab in labels.items() if lab is not None}
    rows, y, found = [], [], set()
    for i, clip in enumerate(scores.ids):
        if clip in wanted:
            rows.append(i)
            y.append(wanted[clip])
            found.add(clip)
    rows, y = np.asarray(rows, np.int64), np.asarray(y, np.float64)
    unknown = len(wanted) - len(found)
    if unknown:
        print(f"warning: {unknown} labelled clip(s) not in {scores.path}; left out", file=sys.stderr)
    x_raw = emb.take(rows) if len(rows) else np.empty((0, emb.dim), np.float32)
    ok = np.isfinite(x_raw).all(axis=1)
    if (~ok).any():
        print(f"warning: {int((~ok).sum())} labelled clip(s) have no embedding (scoring failed); left out",
              file=sys.stderr)
    rows, y, x_raw = rows[ok], y[ok], x_raw[ok]
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos < MIN_PER_CLASS or neg < MIN_PER_CLASS:
        raise cli.UserError(f"{', '.join(map(str, args.labels))}: {pos} interesting and {neg} not "
                            f"interesting clips of {scores.path}; a probe needs {MIN_PER_CLASS} of each: "
                            f"label {max(0, MIN_PER_CLASS - pos)} more interesting and "
                            f"{max(0, MIN_PER_CLASS - neg)} more not interesting clips")
    x = (x_raw.astype(np.float64) - mean) / std
    groups = scores.scene[rows]
    if len(np.unique(groups)) == 1:
        print("warning: every labelled clip is from one scene; cross-validation cannot group by scene",
              file=sys.stderr)
    folds = scene_folds(groups)
    c, losses, cv_p = choose_c(x, y, folds)
    w, b = fit_logistic(x, y, c)
    fp, dim = fingerprint_of(scores)
    probe = {"mean": mean, "std": std, "weights": w, "bias": b, "C": c, "encoder_fingerprint": fp or "",
             "scores": str(scores.path), "embed_dim": emb.dim}
    p = probabilities(emb, probe, chunk_rows, scores)
    k_values = [k for k in cfg["evaluation"]["k_values"] if k <= len(y)] or [len(y)]
    report, table = honest_report(scores, rows, y, cv_p, emb, chunk_rows, k_values)
    ids = [f"r{i}" for i in range(len(y))]
    truth = dict(zip(ids, y.astype(int).tolist()))
    novelty = scores.score[rows]
    nov = {i: None if math.isnan(v) else float(v) for i, v in zip(ids, novelty)}
    cv_ap = {"probe": ranking.ranking_metrics(dict(zip(ids, cv_p.tolist())), truth,
                                              k_values)["average_precision"],
             "novelty": ranking.ranking_metrics(nov, truth, k_values)["average_precision"],
             "positive_rate": pos / len(y)}
    # a kill between the three writes never leaves new p_interesting beside an old probe or meta
    cli.remove_earlier_set(out, f"{out}.probe.npz", f"{out}.meta.json")
    write_probabilities(out, scores, p, labels)
    cli.atomic_write(f"{out}.probe.npz", lambda f: np.savez(f, **probe))
    meta = {"scores": str(scores.path), "embeddings": str(emb.path), "encoder_fingerprint": fp,
            "labels": [str(p_) for p_ in args.labels], "labelled": len(y), "positives": pos,
            "negatives": neg,
            "unknown_clips": unknown, "conflicts": [{"clip_id": cl, "labels": v} for cl, v in conflicts],
            "C": c, "cv_balanced_log_loss": {str(k): v for k, v in losses.items()},
            "folds": int(len(np.unique(folds))), "seed": SEED, "cv_ap": cv_ap, "report": report}
    cli.atomic_write_text(f"{out}.meta.json", json.dumps(meta, indent=1, default=_json) + "\n")
    print(f"probe fitted on {len(y)} labelled clips ({pos} interesting, {neg} not) of {scores.path}: "
          f"C {c} (scene-grouped {meta['folds']}-fold CV, balanced log loss {losses[c]:.4f})")
    print(f"scene-grouped CV AP on the labelled clips: probe {cv_ap['probe']:.3f}, novelty "
          f"{cv_ap['novelty'] or 0:.3f}, random ~{cv_ap['positive_rate']:.3f}")
    if table:
        print(table)
    print(f"p_interesting for {int((~np.isnan(p)).sum())} of {len(p)} clips -> {out}, {out}.probe.npz, "
          f"{out}.meta.json")


def _json(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def run_apply(args, cfg):
    out = Path(args.output)
    cli.check_output(out, {"--scores": args.scores, "--probe": args.probe})
    probe = load_probe(args.probe)
    scores = Scores(args.scores)
    emb = Embeddings(scores)
    check_encoder(probe, args.probe, scores, emb)
    p = probabilities(emb, probe, emb.chunk_rows(cfg["selection"]["chunk_mb"]), scores)
    write_probabilities(out, scores, p, {})
    print(f"p_interesting for {int((~np.isnan(p)).sum())} of {len(p)} clips of {scores.path} -> {out}")


def parse_args(argv=None):
    p, (f, a) = cli.scores_commands(
        __doc__, "scores JSONL from make score; S.emb.npy beside it",
        fit="fit a probe on labelled clips and score every clip (make learn)",
        apply="score the clips of other scores with a fitted probe")
    f.add_argument("--labels", nargs="+", required=True, help="labels JSONL files; later ones win")
    f.add_argument("--output", default="probe.jsonl", help="p_interesting JSONL; OUT.probe.npz and "
                   "OUT.meta.json go beside it (default: probe.jsonl)")
    a.add_argument("--probe", required=True, help="OUT.probe.npz written by make learn")
    a.add_argument("--output", required=True, help="p_interesting JSONL")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = cli.load_config(args.config, args.set)
    return run_fit(args, cfg) if args.command == "fit" else run_apply(args, cfg)


if __name__ == "__main__":
    cli.run_cli(main)
