"""The scores, embeddings and meta files, owned here: the rules of a scores line and the one reader that
report.py, selection.py, learn.py, sample_labels.py and infer.py's merge use (torch-free, so they start fast).

infer.py writes OUT (one JSON line per clip: clip_id, scene, camera, first_frame, score, tubelet_scores, or
score null and an error), OUT.emb.npy (one float32 embedding row per line, row i = line i + 1, a failed clip's
row all NaN) and OUT.meta.json (settings and embed_dim). Numbers are written rounded to SCORE_DECIMALS so
re-runs, resumes and shards give byte-identical files.

The rules, the same for every reader: every line is a complete JSON object (no blank lines, no torn last line)
with a string clip_id, seen once; score a number or null, tubelet_scores a list of numbers, first_frame a path
and scene and camera text when present. A null or non-finite (NaN/inf) score is a failed clip. The first line
that breaks a rule is a one-line UserError naming `file:line`."""
import io
import json
import math
import os
from array import array
from pathlib import Path

import numpy as np

import cli

SCORE_DECIMALS = 6
REDO = "score the clips again with make score"  # what to do about a damaged scores file, unless told


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


# ---- OUT.meta.json ----

def read_meta(scores_path, redo=None):
    """OUT.meta.json beside a scores file as a dict; {} when missing. An unreadable one is {} too (it only
    costs its details), or, given `redo` (what to do), a UserError."""
    path = Path(f"{scores_path}.meta.json")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):
        meta = None
    if isinstance(meta, dict):
        return meta
    if redo:
        raise cli.UserError(f"{path}: corrupt; {redo}")
    return {}


# ---- OUT: the lines ----

def line_problem(obj):
    """What is wrong with one decoded scores line, or None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("clip_id"), str):
        return "not a scores line (a JSON object with a string clip_id)"
    score, tubs = obj.get("score"), obj.get("tubelet_scores", [])
    if (score is not None and not is_number(score)) or not isinstance(tubs, list) \
            or not all(map(is_number, tubs)) or not isinstance(obj.get("first_frame") or "", str) \
            or not all(isinstance(obj.get(k, ""), str) for k in ("scene", "camera")):
        return ("score must be a number or null, tubelet_scores a list of numbers, first_frame a path and "
                "scene and camera text (as infer.py writes them)")
    try:  # JSON integers have no size limit; a 400-digit one does not fit a float
        [float(x) for x in (score or 0, *tubs)]
    except OverflowError:
        return "a score is too large to be a number (as infer.py writes them)"
    return None


def parse_line(raw, where, redo=REDO):
    """One scores line's bytes -> its dict, checked against the rules; UserError `file:line: what`."""
    if not raw.endswith(b"\n"):
        raise cli.UserError(f"{where}: torn last line; {redo} to finish it")
    if not raw.strip():
        raise cli.UserError(f"{where}: blank line; embedding row i belongs to line i + 1, so the file must "
                             f"hold one line per clip ({redo})")
    obj, problem = cli.decode_jsonl_line(raw, where, "scores file")
    problem = problem or line_problem(obj)
    if problem:
        raise cli.UserError(f"{problem if problem.startswith(where) else f'{where}: {problem}'}; {redo}")
    return obj


def finite_score(obj):
    """A line's score as a float, NaN for a failed clip (null or non-finite)."""
    s = obj.get("score")
    return float(s) if s is not None and math.isfinite(s) else math.nan


def is_scored(obj):
    """Whether a checked line's clip has a score (not a failed clip)."""
    return not math.isnan(finite_score(obj))


def clip_dict(obj):
    """A checked line as the full clip record: scene and camera "unknown" when absent, float scores, and a
    failed clip (null or non-finite score) with score None and an error."""
    score = finite_score(obj)
    clip = {"scene": "unknown", "camera": "unknown", "first_frame": None, **obj,
            "score": None if math.isnan(score) else score,
            "tubelet_scores": [float(t) for t in obj.get("tubelet_scores", [])]}
    if obj.get("score") is not None and math.isnan(score):
        clip["error"] = obj.get("error") or f"score is {float(obj['score'])}"
    elif not all(map(math.isfinite, clip["tubelet_scores"])):  # one Infinity would set every chart's scale
        clip.update(score=None, tubelet_scores=[], error=obj.get("error") or "a tubelet score is not finite")
    elif obj.get("score") is None:
        clip.setdefault("error", "no score (reason not recorded)")
    return clip


def lines(path, redo=REDO):
    """Yield (row i, line bytes, dict) for every line of a scores file, streamed, each checked against the
    rules; the repeated-clip_id check runs when the file is read to its end."""
    problem = cli.special_file_problem(path)
    if problem:
        raise cli.UserError(f"{path}: scores file {'not found' if problem == 'file not found' else problem} "
                             f"(write one with make score)")
    hashes = array("q")
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            obj = parse_line(raw, f"{path}:{i + 1}", redo)
            hashes.append(hash(obj["clip_id"]))
            yield i, raw, obj
    if not hashes:
        raise cli.UserError(f"{path}: empty scores file (no clips); {redo}")
    _check_unique(path, np.frombuffer(hashes, np.int64), redo)


def _check_unique(path, hashes, redo):
    """UserError naming the first line whose clip_id an earlier line has."""
    order = np.argsort(hashes, kind="stable")
    later = order[1:][hashes[order][1:] == hashes[order][:-1]]
    for i in np.sort(later):
        first = int(np.flatnonzero(hashes == hashes[i])[0])
        ids = {}
        with open(path, "rb") as f:
            for k, raw in enumerate(f):
                if k in (first, i):
                    ids[k] = json.loads(raw)["clip_id"]
                if k == i:
                    break
        if ids[first] == ids[i]:  # else two ids with one hash: not a repeat
            raise cli.UserError(f"{path}:{i + 1}: duplicate clip_id {ids[i]!r} (first on line {first + 1}); "
                                 f"{redo}")


class Scores:
    """A scores file, lean enough for millions of clips: per clip only its score, scene and line offset are
    held; the clip_id and any other field are re-read from its line. Row i is line i + 1.

    ids: ClipIds (N clip_ids, read on demand); score: (N,) float64, NaN = no score; scene: (N,) int32 index
    into scene_names; offsets: (N,) int64 byte offset of each line."""

    def __init__(self, path, redo=REDO):
        self.path, self.redo = Path(path), redo
        scene_code, self.scene_names = {}, []
        score, scene, offsets, pos = array("d"), array("i"), array("q"), 0
        for _, raw, obj in lines(self.path, redo):
            score.append(finite_score(obj))
            name = str(obj.get("scene", "unknown"))
            if name not in scene_code:
                scene_code[name] = len(self.scene_names)
                self.scene_names.append(name)
            scene.append(scene_code[name])
            offsets.append(pos)
            pos += len(raw)
        self.score, self.scene = np.frombuffer(score, np.float64), np.frombuffer(scene, np.int32)
        self.offsets = np.frombuffer(offsets, np.int64)
        self.ids = ClipIds(self)

    def __len__(self):
        return len(self.offsets)

    def where(self, i):
        return f"{self.path}:{i + 1}"

    def parse(self, raw, i):
        return parse_line(raw, self.where(i), self.redo)

    def line(self, i):
        """Line i + 1 as a dict (re-read from the file)."""
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return self.parse(f.readline(), i)

    def find(self, clip_id):
        try:
            return self.ids.index(clip_id)
        except ValueError:
            raise cli.UserError(f"{self.path}: no clip {clip_id!r} in this scores file; pass a clip_id "
                                 f"from it")


class ClipIds:
    """The clip_ids of a scores file, re-read from their lines when asked for instead of held: a million
    Python strings would be most of select's memory. Supports len(), [i], iteration and index()."""

    def __init__(self, scores):
        self.scores, self._file = scores, None

    def __len__(self):
        return len(self.scores)

    def __getitem__(self, i):
        if self._file is None:  # one handle for all lookups: ties in a large file can ask for many ids
            self._file = open(self.scores.path, "rb")
        self._file.seek(int(self.scores.offsets[i]))
        return self.scores.parse(self._file.readline(), int(i))["clip_id"]

    def __iter__(self):
        with open(self.scores.path, "rb") as f:
            for raw in f:
                yield json.loads(raw)["clip_id"]

    def index(self, clip_id):
        for i, c in enumerate(self):
            if c == clip_id:
                return i
        raise ValueError(clip_id)


# ---- OUT.emb.npy ----

def emb_header(rows, dim):
    """The .npy header of a float32 (rows, dim) array: always 128 bytes, since numpy pads it so that axis 0
    can grow in place; rewriting it after appending rows keeps the file a valid .npy."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buf.getvalue()


class NpyRows:
    """A C-ordered (N, D) float32 .npy as a sliceable array whose slices are read on demand: each is mapped,
    copied and unmapped, so a pass over 1M rows never holds the file's pages in RSS (a map kept open would).
    len(), .shape and [start:stop] -> (rows, D) float32; `n` limits it to the first n rows. ValueError when
    the file is not such an array."""

    def __init__(self, path, n=None):
        mm = np.load(path, mmap_mode="r")
        if mm.dtype != np.float32 or mm.ndim != 2 or not mm.flags.c_contiguous:
            raise ValueError(f"{path}: expected a C-ordered (N, D) float32 array, got {mm.dtype} {mm.shape}")
        self.path, self.offset, (rows, self.dim) = Path(path), mm.offset, mm.shape
        self.n = rows if n is None else min(n, rows)
        self.shape = (self.n, self.dim)
        del mm

    def __len__(self):
        return self.n

    def __getitem__(self, part):
        start, stop, step = part.indices(self.n)
        if step != 1 or stop <= start:
            return np.empty((0, self.dim), np.float32) if stop <= start else self[start:stop][::step]
        offset = self.offset + start * self.dim * 4
        mm = np.memmap(self.path, np.float32, "r", offset, (stop - start, self.dim))
        rows = np.array(mm)
        del mm
        return rows


class Embeddings:
    """S.emb.npy, read in bounded pieces, never whole: np.load(mmap_mode="r") checks its header, full passes
    map one chunk at a time and unmap it (a map kept open holds every page it touched in RSS, which would grow
    to the file's size), scattered rows are read with pread."""

    def __init__(self, scores):
        self.path = Path(f"{scores.path}.emb.npy")
        if not self.path.is_file():
            raise cli.UserError(f"{self.path}: embeddings of {scores.path} not found; {scores.redo}, which "
                                 f"writes them beside the scores")
        try:
            mm = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            raise cli.UserError(f"{self.path}: not a readable .npy file ({e}); {scores.redo}")
        if mm.dtype != np.float32 or mm.ndim != 2 or not mm.flags.c_contiguous or mm.shape[1] < 1:
            raise cli.UserError(f"{self.path}: expected a C-ordered (N, D) float32 array, got {mm.dtype} "
                                 f"{mm.shape}; {scores.redo}")
        (self.n, self.dim), self.offset = mm.shape, mm.offset
        del mm
        if self.n != len(scores):
            raise cli.UserError(f"{self.path} has {self.n} rows but {scores.path} has {len(scores)} lines; "
                                 f"use the two files of one make score run")
        dim = read_meta(scores.path).get("embed_dim")
        if dim is not None and dim != self.dim:
            raise cli.UserError(f"{self.path} holds {self.dim}-d rows but {scores.path}.meta.json says "
                                 f"embed_dim {dim!r}; use the two files of one make score run")

    def _map(self, start, stop):
        offset = self.offset + start * self.dim * 4
        return np.memmap(self.path, np.float32, "r", offset, (stop - start, self.dim))

    def take(self, rows):
        """Rows (B,) in any order -> (B, D) float32, read with pread, one read per run of consecutive rows.
        Not through a memory map: each scattered row touched there maps a whole page-cache folio (over 1 MB a
        row on this machine's kernel), so a batch of 1,024 rows would add over 1 GB to RSS."""
        uniq, back = np.unique(np.asarray(rows, np.int64), return_inverse=True)
        got = np.empty((len(uniq), self.dim), np.float32)
        starts = np.flatnonzero(np.diff(uniq, prepend=-2) != 1)
        row_bytes = self.dim * 4
        with open(self.path, "rb", buffering=0) as f:
            for a, b in zip(starts, np.r_[starts[1:], len(uniq)]):
                data = os.pread(f.fileno(), (b - a) * row_bytes, self.offset + int(uniq[a]) * row_bytes)
                if len(data) != (b - a) * row_bytes:
                    raise cli.UserError(f"{self.path}: truncated (row {uniq[b - 1]} missing); score again")
                got[a:b] = np.frombuffer(data, np.float32).reshape(b - a, self.dim)
        return got[back.reshape(-1)]

    def chunks(self, rows):
        """Yield (first row, (<= rows, D) float32) over the whole file in order. The array is one buffer
        reused for every chunk: it is valid until the next one is read."""
        buf = np.empty((min(rows, self.n), self.dim), np.float32)
        for start in range(0, self.n, rows):
            stop = min(start + rows, self.n)
            mm = self._map(start, stop)
            buf[:stop - start] = mm
            del mm
            yield start, buf[:stop - start]

    def raw_rows(self):
        """Yield each row's bytes in order, streamed (for copying rows, as the merge does)."""
        row_bytes = self.dim * 4
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for i in range(self.n):
                data = f.read(row_bytes)
                if len(data) != row_bytes:
                    raise cli.UserError(f"{self.path}: truncated (row {i} missing); score again")
                yield data

    def chunk_rows(self, chunk_mb):
        return max(1, chunk_mb * 2 ** 20 // (self.dim * 4))
