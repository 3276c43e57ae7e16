"""The scores file format, owned here (torch-free, so report.py and selection.py start fast).

infer.py writes OUT (one JSON line per clip: clip_id, scene, camera, first_frame, score, tubelet_scores, or
score null and an error), OUT.emb.npy (one float32 embedding row per line) and OUT.meta.json (settings and
embed_dim). Numbers are written rounded to SCORE_DECIMALS so re-runs, resumes and shards give byte-identical
files."""
import json
from pathlib import Path

SCORE_DECIMALS = 6


def clip_score(novelty, aggregate):
    """A clip's score from its tubelets' novelty (1 - cos): mean or max, rounded for stable files."""
    value = max(novelty) if aggregate == "max" else sum(novelty) / len(novelty)
    return round(float(value), SCORE_DECIMALS)


def is_number(x):
    """A JSON number (bool is not one), as a scores line's score or tubelet score must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_timestamp(x):
    """A manifest timestamp (µs) a page or a selection can use: a number within 10**17 µs (3,000 years) of
    the epoch; NaN, infinity and a 400-digit integer (hand-edited manifests) are not."""
    return is_number(x) and -1e17 < x < 1e17


def read_meta(scores_path):
    """OUT.meta.json beside a scores file as a dict, or {} when missing or unreadable (a missing or broken
    sidecar only costs its details)."""
    try:
        meta = json.loads(Path(f"{scores_path}.meta.json").read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}
