"""The scores file format, owned here (torch-free, so report.py and selection.py start fast).

infer.py writes OUT (one JSON line per clip: clip_id, scene, camera, first_frame, score, tubelet_scores, or
score null and an error), OUT.emb.npy (one float32 embedding row per line) and OUT.meta.json (settings and
embed_dim). Numbers are written rounded to SCORE_DECIMALS so re-runs, resumes and shards give byte-identical
files."""
SCORE_DECIMALS = 6


def clip_score(novelty, aggregate):
    """A clip's score from its tubelets' novelty (1 - cos): mean or max, rounded for stable files."""
    value = max(novelty) if aggregate == "max" else sum(novelty) / len(novelty)
    return round(float(value), SCORE_DECIMALS)
