"""Manifests: read and validate them (train.py, eval.py and infer.py use this), build them from a nuScenes
download or from folders of frames, and check one.

Usage:
  python manifest.py nuscenes --dataroot /data/nuscenes --version v1.0-mini --cameras CAM_FRONT \
      --frames 16 --stride 16 --source samples --output data/manifests/nuscenes_mini.jsonl
  python manifest.py frames --frames-dir /data/drives --frames 16 --stride 16 \
      --output data/manifests/drives.jsonl
  python manifest.py videos --videos-dir /data/videos --frames 16 --stride 16 [--fps 4] \
      --output data/manifests/videos.jsonl
  python manifest.py check --manifest data/manifests/nuscenes_mini.jsonl [--data-root /data/nuscenes]
  (make manifest NUSCENES=... | FRAMES_DIR=... ; make check MANIFEST=... [DATA_ROOT=...])

nuscenes: reads VERSION/{scene,sample,sample_data,calibrated_sensor,sensor}.json directly (no
nuscenes-devkit).
  --source samples takes the key frames (2 Hz) of each scene's samples; --source sweeps takes every camera
  frame (~12 Hz) along the sample_data prev/next chain. Clips are windows of --frames frames every --stride
  frames per scene and camera (a partial tail is dropped). frame_paths are relative to the dataroot, as in
  sample_data, so pass --data-root DATAROOT (DATA_ROOT=) to check/train/eval/infer unless the manifest is
  written into it. Frames listed in the tables but missing on disk are counted and the clips that need them
  are left out.
frames: one sub-folder per scene under --frames-dir, holding images directly or in per-camera sub-folders;
  frames sort naturally (frame_2 before frame_10); frame_paths are relative to the manifest's own folder,
  computed from the paths as given (symlinks are kept, never resolved), or absolute where no relative path
  from the manifest's folder reaches the frame.
Splits: --split for all clips; else the official split where vendored here (the v1.0-mini lists, and `test`
for
  v1.0-test); else a seeded split by whole scenes: round(20%) of those scenes go to val, at least one when
  there are two or more, so with few scenes the clip counts are far from 80/20 (the summary says what was
  drawn). The official v1.0-trainval lists (850 scenes) are not vendored: trainval scenes get the seeded
  split.
check: prints a summary, `warning: file:line: what` and `error: file:line: what` lines; exit 1 on any error.
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

import cli

TABLES = ("scene", "sample", "sample_data", "calibrated_sensor", "sensor")
MINI_SPLITS = {**dict.fromkeys(["scene-0103", "scene-0916"], "val"),
               **dict.fromkeys(["scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796",
                                "scene-1077", "scene-1094", "scene-1100"], "train")}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# ---- reading manifests (train.py, eval.py, infer.py and check use these) ----

# problems listed one per line before the rest are counted: a broken 1M-line file stays readable
MAX_LISTED = 20
DERIVED_ID_RULE = ("a line without clip_id gets SCENE__CAMERA__HASH, HASH = the first 10 hex digits of the "
                   "SHA-1 of its frame list as JSON; the id also seeds the clip's masks, "
                   "so ids must be stable")


def derived_clip_id(scene, camera, frames):
    """The clip_id of a manifest line that has none (DERIVED_ID_RULE): depends only on the line's content."""
    return f"{scene}__{camera}__{hashlib.sha1(json.dumps(frames).encode()).hexdigest()[:10]}"


def _clip_fields(raw, where):
    """Validate one manifest line (either research style): (clip_id, frames as written) or a problem
    string."""
    if not isinstance(raw, dict):
        return f"{where}: expected a JSON object"
    if "video" in raw:
        return _video_fields(raw, where)
    frames = raw.get("frame_paths", raw.get("frames"))
    if not isinstance(frames, list) or set(map(type, frames)) != {str} or "" in frames:  # C loops: 1M lines
        return f"{where}: no frames (need a non-empty list of paths in 'frame_paths' or 'frames')"
    split = raw.get("split")
    if split is not None and split not in ("train", "val", "test"):
        return f"{where}: split must be train, val or test, got {split!r}"
    clip_id = raw.get("clip_id")
    if clip_id is None:
        clip_id = derived_clip_id(str(raw.get("scene_id", raw.get("scene", "unknown"))),
                                  str(raw.get("camera", "unknown")), frames)
    return str(clip_id), frames


def _video_fields(raw, where):
    """(clip_id, frame references as written) of a video line, or a problem string. frame_indices give the
    references `VIDEO#frame=N`; a start_s line gets `VIDEO#frame=?` placeholders (resolved by
    clip_record, which reads the stream's presentation times)."""
    import video
    video.import_av()  # a video manifest without PyAV: one line with the install command
    path = raw["video"]
    if not isinstance(path, str) or not path:
        return f"{where}: 'video' must be a path to a video file"
    split = raw.get("split")
    if split is not None and split not in ("train", "val", "test"):
        return f"{where}: split must be train, val or test, got {split!r}"
    idx = raw.get("frame_indices")
    if idx is not None:
        if not isinstance(idx, list) or not idx or any(type(i) is not int or i < 0 for i in idx):
            return f"{where}: frame_indices must be a non-empty list of frame numbers >= 0"
        span = {"video": path, "frame_indices": idx}
        frames = [video.ref(path, i) for i in idx]
    else:
        start, n, every = raw.get("start_s"), raw.get("num_frames"), raw.get("every", 1)
        if (not isinstance(start, (int, float)) or start < 0 or type(n) is not int or n < 1
                or type(every) is not int or every < 1):
            return (f"{where}: a video line needs frame_indices, or start_s (seconds >= 0) + num_frames "
                    f"(>= 1) [+ every (>= 1)]")
        span = {"video": path, "start_s": start, "num_frames": n, "every": every}
        frames = [f"{path}#frame=?"] * n
    clip_id = raw.get("clip_id")
    if clip_id is None:  # the id covers the file and the frame range
        clip_id = derived_clip_id(str(raw.get("scene_id", raw.get("scene", "unknown"))),
                                  str(raw.get("camera", "unknown")), span)
    return str(clip_id), frames


def _video_record(raw, base):
    """frames (`PATH#frame=N`, path resolved against `base`) and timestamps (µs, from the stream's
    presentation times) of a video line; an unreadable start_s line gets `PATH#frame=-1` references, which
    fail to load with the reason (make check reports it)."""
    import video
    path = raw["video"] if os.path.isabs(raw["video"]) else str(Path(base) / raw["video"])
    idx = raw.get("frame_indices")
    if idx is None:
        try:
            idx = video.indices_from_start(path, raw["start_s"], raw["num_frames"], raw.get("every", 1))
        except OSError:
            idx = [-1] * raw["num_frames"]
    stamps = raw.get("timestamps") or (video.timestamps_us(path, idx) if min(idx) >= 0 else None)
    return path, [video.ref(path, i) for i in idx], stamps


def clip_record(raw, line, base, where):
    """One manifest line -> normalised clip dict (frames resolved against `base`), or a problem string."""
    fields = _clip_fields(raw, where)
    if isinstance(fields, str):
        return fields
    clip_id, frames = fields
    if "video" in raw:
        path, frames, stamps = _video_record(raw, base)
        return {"clip_id": clip_id, "id_derived": raw.get("clip_id") is None,
                "scene": str(raw.get("scene_id", raw.get("scene", "unknown"))),
                "camera": str(raw.get("camera", "unknown")), "split": raw.get("split"), "line": line,
                "frames": frames, "timestamps": stamps, "video": path}
    return {"clip_id": clip_id, "id_derived": raw.get("clip_id") is None,
            "scene": str(raw.get("scene_id", raw.get("scene", "unknown"))),
            "camera": str(raw.get("camera", "unknown")), "split": raw.get("split"), "line": line,
            "frames": [f if os.path.isabs(f) else str(Path(base) / f) for f in frames],
            "timestamps": raw.get("timestamps")}


def _decode_line(raw, where, what):
    """(object, None) of one JSONL line's bytes, or (None, problem). A UTF-8 BOM is accepted."""
    try:
        return json.loads(raw.decode("utf-8-sig")), None
    except UnicodeDecodeError:
        return None, f"{where}: not UTF-8 text (re-save the {what} as UTF-8)"
    except json.JSONDecodeError as e:
        return None, f"{where}: not JSON ({e.msg} at column {e.colno})"
    except (ValueError, RecursionError) as e:  # a 5,000-digit number, or lists nested 100,000 deep
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
        return None, f"{where}: not JSON this reader accepts ({why}); fix or delete the line"


def jsonl_lines(path, what="manifest"):
    """Yield (line number, `file:line`, object, problem, byte offset) per non-blank line of a JSONL file,
    reading it as a stream; object is None and problem says why when the line is not UTF-8 or not JSON."""
    with open(path, "rb") as f:
        offset = 0
        for line, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if raw.strip():
                where = f"{path}:{line}"
                yield (line, where, *_decode_line(raw, where, what), start)


def _input_file(path, what, hint):
    """UserError unless `path` is a regular file (a FIFO or device would block or never end)."""
    problem = cli.special_file_problem(path)
    if problem:
        raise cli.UserError(f"{path}: {what} {'not found' if problem == 'file not found' else problem}{hint}")


def problem_kind(message):
    """What a `file:line: ...` problem is about, without the place and the values: the key problems are
    grouped by."""
    kind = re.sub(r"^.*?:\d+: ", "", message)
    kind = re.split(r" \(|, got |: not |\d", kind)[0]
    return kind.strip(" :") or "problem"


class Problems:
    """A capped list of problems, fed one at a time (a broken 1M-line file or an unmounted disk keeps only
    MAX_LISTED lines here): lines() gives the first MAX_LISTED, then per kind "... and M more of the same
    kind, e.g. ...", then, past the cap, one summary line per kind of frame problem (add_frame)."""

    def __init__(self, limit=MAX_LISTED):
        self.limit, self.listed, self.count = limit, [], 0
        self.kinds, self.listed_kinds = Counter(), Counter()
        self.example = {}    # kind -> first problem of that kind not listed
        self.frames = {}     # frame problem kind -> [count, common folder, first path]

    def add(self, message, kind=None):
        kind = kind or problem_kind(message)
        self.count += 1
        self.kinds[kind] += 1
        if len(self.listed) < self.limit:
            self.listed.append(message)
            self.listed_kinds[kind] += 1
        else:
            self.example.setdefault(kind, message)

    def add_frame(self, where, path, why):
        """`where: frame PATH: why`, grouped by why (without its details) and counted per folder."""
        kind = "missing" if why == "file not found" else why.split(" (")[0]
        self.add(f"{where}: frame {path}: {why}", f"frame {kind}")
        folder = os.path.dirname(path)
        entry = self.frames.setdefault(kind, [0, folder, path])
        entry[0] += 1
        if entry[1] and folder != entry[1] and not folder.startswith(entry[1] + os.sep):
            try:
                entry[1] = os.path.commonpath([entry[1], folder])
            except ValueError:  # absolute and relative paths mixed
                entry[1] = ""

    def __iadd__(self, messages):
        """`problems += [message, ...]` (the video checks return plain lists)."""
        for message in messages:
            self.add(message)
        return self

    def __len__(self):
        return self.count

    def lines(self, frames_total=None):
        out = list(self.listed)
        for kind, message in self.example.items():
            out.append(f"... and {self.kinds[kind] - self.listed_kinds[kind]:,} more of the same kind, "
                       f"e.g. {message}")
        if self.count > self.limit:
            out += [_frame_summary(kind, *entry, frames_total) for kind, entry in self.frames.items()]
        return out

    def raise_if_any(self, tail=(), code=2, frames_total=None):
        if self.count:
            raise cli.UserError("\n".join(self.lines(frames_total) + list(tail)), code=code)


def _data_root_hint(path):
    """DATA_ROOT=<folder> when the part of a missing frame's path from samples/ or sweeps/ on exists under
    an ancestor of it (or one of that ancestor's sub-folders), else None: a manifest resolved against the
    wrong root."""
    parts = Path(path).parts
    at = next((i for i, p in enumerate(parts) if p in ("samples", "sweeps")), None)
    if at is None:
        return None
    tail, wrong = Path(*parts[at:]), Path(*parts[:at]) if at else Path(".")
    for ancestor in [wrong, *wrong.parents]:
        try:
            children = sorted(c for c in ancestor.iterdir() if c.is_dir())[:100]
        except OSError:
            continue
        for root in [ancestor, *children]:
            if root != wrong and (root / tail).is_file():
                return str(root)
    return None


def _frame_summary(kind, n, folder, first, frames_total):
    """One by-kind summary line, e.g. "4,998 frame(s) missing under /mnt/fleet/: is it mounted?"."""
    where = f" under {folder.rstrip(os.sep)}{os.sep}" if folder else ""
    line = f"{n:,} frame(s) {'not found' if kind == 'missing' else kind}{where}"
    if kind != "missing":
        return line
    root = _data_root_hint(first) if frames_total is None or n * 2 > frames_total else None
    if root:
        return f"{line}: the frames are under {root}: pass DATA_ROOT={root}"
    return line + (": is it mounted?" if folder and not os.path.isdir(folder) else "")


def raise_problems(problems, count=None):
    """UserError listing the first MAX_LISTED problems (one per line), then counting the rest by kind."""
    listing = Problems()
    for problem in problems:
        listing.add(problem)
    extra = (len(problems) if count is None else count) - len(problems)
    listing.raise_if_any([f"... and {extra:,} more problem(s)"] if extra > 0 else [])


def read_jsonl(path, what, hint=""):
    """[(where, object)] of a JSONL file of clips, skipping blank lines; UserError listing every `file:line`
    problem (not UTF-8, not JSON, not an object with a string clip_id, a repeated clip_id)."""
    _input_file(path, what, hint)
    rows, problems, seen = [], [], {}
    for line, where, obj, problem, _ in jsonl_lines(path, what):
        if problem:
            problems.append(problem)
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("clip_id"), str):
            problems.append(f"{where}: expected a JSON object with a string clip_id")
            continue
        if obj["clip_id"] in seen:
            problems.append(f"{where}: duplicate clip_id {obj['clip_id']!r} (first on line "
                            f"{seen[obj['clip_id']]})")
            continue
        seen[obj["clip_id"]] = line
        rows.append((where, obj))
    if problems:
        raise_problems(problems)
    if not rows:
        raise cli.UserError(f"{path}: empty {what} (no clips)")
    return rows


def _manifest_base(path, root):
    return str(Path(root)) if root else str(Path(path).resolve().parent)


def parse_manifest(path, root=None, tubelet_size=2):
    """Read a JSONL manifest into (clip dicts, problems); frames resolve against `root` or the manifest's
    folder.

    Each problem is one `file:line: what` string; lines with problems are left out of the clips."""
    path = Path(path)
    problem = cli.special_file_problem(path)
    if problem:
        return [], [f"{path}: manifest {'not found' if problem == 'file not found' else problem} "
                    f"(pass MANIFEST=path/to/clips.jsonl)"]
    base = _manifest_base(path, root)
    records, problems, seen = [], [], {}
    for line, where, raw, problem, _ in jsonl_lines(path):
        rec = problem or clip_record(raw, line, base, where)
        if isinstance(rec, dict) and len(rec["frames"]) < tubelet_size:
            rec = f"{where}: {len(rec['frames'])} frame(s), fewer than one tubelet ({tubelet_size})"
        elif isinstance(rec, dict) and rec["clip_id"] in seen:
            rec = f"{where}: duplicate clip_id {rec['clip_id']!r} (first on line {seen[rec['clip_id']]})"
        if isinstance(rec, str):
            problems.append(rec)
            continue
        seen[rec["clip_id"]] = line
        records.append(rec)
    if not records and not problems:
        problems.append(f"{path}: empty manifest (no clips)")
    return records, problems


def read_manifest(path, root=None, tubelet_size=2):
    """parse_manifest, raising UserError with every problem (one line each) when there are any."""
    records, problems = parse_manifest(path, root, tubelet_size)
    if problems:
        raise_problems(problems)
    return records


class ClipIndex:
    """A validated manifest for fleet-size runs, kept as numbers instead of parsed records: per kept clip its
    line's byte offset, line number, frame count and a 64-bit hash of its clip_id (24 bytes instead of ~5 KB).
    A clip's line is read and parsed again when it is asked for (in the loader's workers)."""

    def __init__(self, path, base, offsets, lines, frame_counts, id_hashes, fingerprint):
        self.path, self.base, self.fingerprint = Path(path), base, fingerprint
        self.offsets, self.lines, self.frame_counts, self.id_hashes = offsets, lines, frame_counts, id_hashes
        self._file, self._pid = None, None

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, i):
        if self._pid != os.getpid():  # one handle per process: loader workers are forked
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        self._file.seek(int(self.offsets[i]))
        raw, _ = _decode_line(self._file.readline(), f"{self.path}:{self.lines[i]}", "manifest")
        return clip_record(raw, int(self.lines[i]), self.base, f"{self.path}:{self.lines[i]}")

    def tail(self, start):
        """The clips from position `start` on (views of the same arrays)."""
        return ClipIndex(self.path, self.base, self.offsets[start:], self.lines[start:],
                         self.frame_counts[start:], self.id_hashes[start:], self.fingerprint)

    def __getstate__(self):  # a worker reopens the file itself
        return {**self.__dict__, "_file": None, "_pid": None}


def id_hash(clip_id):
    """64-bit hash of a clip_id: how ClipIndex finds duplicates and matches output lines without keeping the
    ids. Python's own string hash: fast, and stable within a process, the only place these hashes live."""
    return hash(clip_id)


def scan_manifest(path, root=None, tubelet_size=2, shard=(0, 1)):
    """Validate every line of a manifest in one streaming pass and keep a ClipIndex of the clips at positions
    shard[0], shard[0] + shard[1], ... Every shard validates every line, so each refuses a bad manifest alike.
    The fingerprint hashes the kept lines' bytes (the folder frames resolve against is ClipIndex.base)."""
    path = Path(path)
    _input_file(path, "manifest", " (pass MANIFEST=path/to/clips.jsonl)")
    base = _manifest_base(path, root)
    first, step = shard
    all_hashes, problems, count = array("q"), [], 0
    kept = {k: array("q") for k in ("offsets", "lines", "frames", "hashes")}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        offset = 0
        for line, raw in enumerate(f, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            where = f"{path}:{line}"
            obj, problem = _decode_line(raw, where, "manifest")
            fields = problem or _clip_fields(obj, where)
            if not isinstance(fields, str) and len(fields[1]) < tubelet_size:
                fields = f"{where}: {len(fields[1])} frame(s), fewer than one tubelet ({tubelet_size})"
            if isinstance(fields, str):
                count += 1
                if count <= MAX_LISTED:
                    problems.append(fields)
                continue
            all_hashes.append(id_hash(fields[0]))
            if (len(all_hashes) - 1) % step == first:
                for key, value in zip(kept, (start, line, len(fields[1]), all_hashes[-1])):
                    kept[key].append(value)
                digest.update(raw.rstrip(b"\r\n") + b"\n")
    duplicates = _duplicate_problems(path, all_hashes)
    if problems or duplicates:
        raise_problems(sorted(problems + duplicates, key=_line_of), count + len(duplicates))
    if not all_hashes:
        raise cli.UserError(f"{path}: empty manifest (no clips)")
    arrays = [np.frombuffer(kept[k], dtype=np.int64) for k in ("offsets", "lines", "frames", "hashes")]
    return ClipIndex(path, base, *arrays, digest.hexdigest()[:16])


def _line_of(problem):
    match = re.search(r":(\d+): ", problem)
    return int(match.group(1)) if match else 0


def _duplicate_problems(path, hashes):
    """`file:line: duplicate clip_id` problems, found through the ids' hashes (a second pass only when two
    hashes collide, so the common case keeps no clip_id in memory)."""
    values, counts = np.unique(np.frombuffer(hashes, dtype=np.int64), return_counts=True)
    repeated = set(values[counts > 1].tolist())
    if not repeated:
        return []
    problems, seen = [], {}
    for line, where, obj, problem, _ in jsonl_lines(path):
        fields = problem or _clip_fields(obj, where)
        if isinstance(fields, str) or id_hash(fields[0]) not in repeated:
            continue
        if fields[0] in seen:
            problems.append(f"{where}: duplicate clip_id {fields[0]!r} (first on line {seen[fields[0]]})")
        else:
            seen[fields[0]] = line
    return problems


def frame_problem(path, decode=False):
    """Why a frame cannot be used (missing, not a regular file, empty, not an image, undecodable), or None.
    A special file (FIFO, device) is named without being opened."""
    problem = cli.special_file_problem(path)
    if problem:
        return problem
    try:
        if os.path.getsize(path) == 0:
            return "zero-byte file"
        with Image.open(path) as im:
            if decode:
                im.load()
    except FileNotFoundError:
        return "file not found"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"not a readable image ({e})"
    return None


def check_frames(records, manifest_path, decode=False):
    """Raise UserError listing unusable frames as `manifest:line: frame PATH: problem` (capped, by kind)."""
    problems, total = Problems(), 0
    for rec in records:
        if rec.get("video"):
            problems += _check_video(rec, manifest_path, decode)
            continue
        for f in rec["frames"]:
            total += 1
            why = frame_problem(f, decode)
            if why:
                problems.add_frame(f"{manifest_path}:{rec['line']}", f, why)
    problems.raise_if_any(frames_total=total)


def _check_video(rec, manifest_path, decode):
    """[`manifest:line: video PATH: problem`] for a video clip: opens, codec, duration, its frames decode."""
    import video
    import_problem = None
    try:
        video.import_av()
    except cli.UserError as e:
        import_problem = str(e)
    idx = [video.parse_ref(f)[1] for f in rec["frames"]]
    why = import_problem or video.video_problem(rec["video"], idx, decode)
    if not why and min(idx) < 0:
        why = "start_s is past the end of the stream, or too few frames follow it"
    fix = "" if import_problem else "; re-copy or re-encode the file, or drop its clips from the manifest"
    return [f"{manifest_path}:{rec['line']}: video {rec['video']}: {why}{fix}"] if why else []


def _video_size(path):
    import video
    try:
        info = video.probe(path)
    except OSError:
        return "unreadable video"
    return f"{info['width']}x{info['height']} {info['codec']} {info['duration_s']:.1f} s video"


def manifest_fingerprint(records):
    """Hash of what the manifest says (clip ids, splits, resolved frame paths), independent of formatting."""
    body = [(r["clip_id"], r["split"], r["frames"]) for r in records]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


def assign_splits(records, seed, val_fraction=0.2, use_manifest_split=True):
    """Split per clip: the manifest's `split` when given, else a seeded split by scene (by clip under 5
    scenes)."""
    if not use_manifest_split:
        records = [dict(r, split=None) for r in records]
    free = [r for r in records if r["split"] is None]
    by_scene = len({r["scene"] for r in free}) >= 5
    units = sorted({r["scene"] if by_scene else r["clip_id"] for r in free})
    random.Random(seed).shuffle(units)
    n_val = round(val_fraction * len(units)) if len(units) > 1 else 0
    val_units = set(units[:max(n_val, 1 if val_fraction > 0 and len(units) > 1 else 0)])
    return [r["split"] or ("val" if (r["scene"] if by_scene else r["clip_id"]) in val_units else "train")
            for r in records]


# ---- shared ----

def natural_key(name):
    """Sort key where digit runs compare as numbers (frame_2 before frame_10); the name itself breaks ties."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)], name


def seeded_splits(scenes, seed):
    """Scene -> train/val by assign_splits (80/20 with the same shuffle training uses). Each scene goes in as
    a one-clip record whose clip_id is the scene, so the split stays by scene even with under 5 scenes."""
    names = sorted(scenes)
    return dict(zip(names, assign_splits([{"scene": s, "clip_id": s, "split": None} for s in names], seed)))


def check_window(frames, stride):
    """UserError unless a clip holds at least one tubelet and the stride moves forward."""
    tubelet = cli.load_config()["data"]["tubelet_size"]
    if frames < tubelet:
        raise cli.UserError(f"--frames {frames}: a clip needs at least one tubelet ({tubelet} frames, "
                             f"data.tubelet_size); use FRAMES=16")
    if stride < 1:
        raise cli.UserError(f"--stride {stride}: must be >= 1 (STRIDE=FRAMES gives back-to-back clips)")


def cut(sequences, frames, stride):
    """(sequence, window of items) for every full window; prints a warning for each sequence that is too
    short."""
    for seq in sequences:
        if len(seq["items"]) < frames:
            print(f"warning: {seq['label']}: {len(seq['items'])} frame(s), "
                  f"fewer than --frames {frames}; no clip",
                  file=sys.stderr)
        for start in range(0, len(seq["items"]) - frames + 1, stride):
            yield seq, start, seq["items"][start:start + frames]


def write_manifest(path, rows, splits_of, rules=()):
    """Write rows atomically, filling each row's split from splits_of(scene); print a summary line, then one
    `splits: ...` line per rule (how the splits were chosen)."""
    if not rows:
        raise cli.UserError(f"{path}: no clips to write (see the warnings above); lower --frames or add data")
    for row in rows:
        row["split"] = splits_of(row["scene_id"])
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cli.UserError(f"cannot create {path.parent}: {e.strerror or e}; choose another OUT=")
    cli.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    splits = Counter(r["split"] for r in rows)
    print(f"wrote {len(rows)} clips to {path}: {len({r['scene_id'] for r in rows})} scenes, "
          f"{len({r['camera'] for r in rows})} cameras, "
          + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    for rule in rules:
        print(f"splits: {rule}")
    warning = split_warning(splits["train"], splits["val"], len({r["scene_id"] for r in rows}))
    if warning:
        print(warning)


def split_warning(n_train, n_val, n_scenes):
    """A warning when a split leaves train with fewer clips than val or under 20% of them (a split by whole
    scene with a few long drives), saying how to split by clip instead; or None."""
    total = n_train + n_val
    if total < 10 or (n_train >= n_val and n_train >= 0.2 * total):  # under 10 clips: any split is rough
        return None
    if n_scenes < 5:
        how = 'train with ARGS="--set data.use_manifest_split=false" (under 5 scenes: a seeded split by clip)'
    else:
        how = 'set each line\'s "split" yourself (e.g. every 5th clip of a drive val)'

    return (f"warning: the split leaves train {n_train} clips and val {n_val}: training sees "
            f"{100 * n_train / total:.0f}% of the clips (split by whole scene: a few long drives fall on one "
            f"side). To split by clip, {how}")


def split_chooser(fixed, official, scenes, seed, official_name="official"):
    """(scene -> split, what the rule was in words): --split when given, else the official split, else the
    seeded one by whole scenes."""
    if fixed:
        return (lambda scene: fixed), [f"every clip {fixed} (--split {fixed})"]
    free = sorted(s for s in scenes if s not in official)
    seeded = seeded_splits(free, seed)
    parts = []
    if len(free) < len(scenes):
        parts.append(f"{len(scenes) - len(free)} scene(s) by the {official_name} split")
    if free:
        n_val = sum(v == "val" for v in seeded.values())
        parts.append(f"seed {seed} drew {n_val} of {len(free)} scenes as val (20% rounded, at least 1 of 2 "
                     "or more); clips go with their scene")
    return (lambda scene: official.get(scene) or seeded[scene]), parts


# ---- nuScenes ----

def load_tables(dataroot, version):
    """The five tables (lists of rows) of VERSION under the dataroot; UserError naming what is missing."""
    root = Path(dataroot)
    if not root.is_dir():
        raise cli.UserError(f"{root}: nuScenes dataroot not found (NUSCENES= the folder holding {version}/ "
                             f"and samples/)")
    folder = root / version
    if not folder.is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir()
                                 and p.name.startswith("v1.0"))) or "none"
        raise cli.UserError(f"{folder}: version folder not found (VERSION={version}; found: {found})")
    tables = {}
    for name in TABLES:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise cli.UserError(f"{path}: table missing; extract the {version} metadata archive into {root}")
        try:
            tables[name] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise cli.UserError(f"{path}: not a JSON table ({e}); re-extract the {version} metadata")
        if not isinstance(tables[name], list) or not all(isinstance(r, dict) and "token" in r
                                                         for r in tables[name]):
            raise cli.UserError(f"{path}: not a nuScenes table (a JSON list of records with a token); "
                                f"re-extract the {version} metadata")
    return tables


def camera_channels(tables):
    """calibrated_sensor_token -> camera channel: sample_data names only its calibrated sensor, whose
    sensor_token leads to the sensor row holding the channel (CAM_FRONT, ...) and modality."""
    cams = {s["token"]: s["channel"] for s in tables["sensor"] if s.get("modality") == "camera"}
    return {c["token"]: cams[c["sensor_token"]] for c in tables["calibrated_sensor"]
            if c["sensor_token"] in cams}


def pick_cameras(spec, available):
    """--cameras: `all` (sorted) or a comma list, each a camera channel of this download."""
    if spec.strip() == "all":
        return sorted(available)
    wanted = list(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    unknown = [c for c in wanted if c not in available] or ([] if wanted else ["(none given)"])
    if unknown:
        raise cli.UserError(f"--cameras {spec}: unknown camera {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(available))}, or all")
    return wanted


def follow(table, token, link, keep):
    """Rows from `token` along `link` (next/prev) while keep(row); stops at a dangling token or a loop."""
    seen = set()
    while token and token in table and token not in seen and keep(table[token]):
        seen.add(token)
        yield table[token]
        token = table[token][link]


def nuscenes_sequences(tables, cameras, source):
    """One sequence of sample_data rows per scene (by name) and camera, in time order."""
    samples = {s["token"]: s for s in tables["sample"]}
    data = {r["token"]: r for r in tables["sample_data"]}
    channel = camera_channels(tables)
    keyframe = {(r["sample_token"], channel[r["calibrated_sensor_token"]]): r for r in tables["sample_data"]
                if r["is_key_frame"] and channel.get(r["calibrated_sensor_token"]) in cameras}
    for scene in sorted(tables["scene"], key=lambda s: s["name"]):
        in_scene = lambda row, tok=scene["token"]: (
            samples.get(row["sample_token"], {}).get("scene_token") == tok)
        chain = [s["token"] for s in follow(samples, scene["first_sample_token"], "next", lambda s: True)]
        for cam in cameras:
            rows = [keyframe[s, cam] for s in chain if (s, cam) in keyframe]
            if source == "sweeps" and rows:  # walk back from the first key frame, then forward to the end
                rows = list(follow(data, rows[0]["prev"], "prev", in_scene))[::-1] + \
                    list(follow(data, rows[0]["token"], "next", in_scene))
                # the chain is already in time order; this only guards it
                rows.sort(key=lambda r: r["timestamp"])
            yield {"scene": scene["name"], "camera": cam, "label": f"{scene['name']} {cam}", "items": rows}


def nuscenes_manifest(args):
    """`nuscenes` command: tables -> clips of the chosen cameras and source -> --output."""
    check_window(args.frames, args.stride)
    tables = load_tables(args.dataroot, args.version)
    try:
        cameras = pick_cameras(args.cameras, set(camera_channels(tables).values()))
        seqs = list(nuscenes_sequences(tables, cameras, args.source))
    except (KeyError, TypeError) as e:  # a record without a field the schema has
        raise cli.UserError(f"{Path(args.dataroot) / args.version}: the tables do not follow the nuScenes "
                            f"schema (no {e} in a record); re-extract the {args.version} metadata")
    listed = {r["filename"] for seq in seqs for r in seq["items"]}
    missing = {f for f in listed if not os.path.isfile(os.path.join(args.dataroot, f))}
    rows, skipped = [], 0
    for seq, _, window in cut(seqs, args.frames, args.stride):
        if any(r["filename"] in missing for r in window):
            skipped += 1  # a clip with a hole would shift every later tubelet in time: leave it out whole
            continue
        first, last = window[0]["timestamp"], window[-1]["timestamp"]
        rows.append({"clip_id": f"{seq['scene']}__{seq['camera']}__{first}__{last}", "split": None,
                     "scene_id": seq["scene"], "camera": seq["camera"],
                     "frame_paths": [r["filename"] for r in window],
                     "timestamps": [r["timestamp"] for r in window]})
    if missing:
        print(f"warning: {len(missing)} of {len(listed)} frame files listed for these cameras are missing "
              f"under {args.dataroot} (partial download?), e.g. {min(missing)}; "
              f"skipped {skipped} clip(s) that need them",
              file=sys.stderr)
    official = MINI_SPLITS if args.version == "v1.0-mini" else {}
    if args.version == "v1.0-test":
        official = {s["name"]: "test" for s in tables["scene"]}
    write_manifest(args.output, rows, *split_chooser(args.split, official, {r["scene_id"] for r in rows},
                                                     args.seed, f"official {args.version}"))
    if Path(args.output).resolve().parent != Path(args.dataroot).resolve():
        print(f"frame paths are relative to {args.dataroot}: pass DATA_ROOT={args.dataroot} "
              f"(--data-root) to make check, train, eval and infer")


# ---- folders of frames ----

def images_in(folder):
    """Image files directly in `folder`, naturally sorted; other files (and hidden ones) are ignored."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                   and not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def folder_sequences(frames_dir):
    """One sequence per scene folder (camera `unknown`: no camera is named) and per camera sub-folder in
    it."""
    root = Path(frames_dir)
    if not root.is_dir():
        raise cli.UserError(f"{root}: frames folder not found "
                            "(FRAMES_DIR= a folder with one sub-folder per scene)")
    subdirs = lambda p: sorted((d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")),
                               key=lambda d: natural_key(d.name))
    for scene in subdirs(root):
        cams = subdirs(scene)
        direct = images_in(scene)
        if direct or not cams:  # a scene folder with neither images nor camera folders is reported as empty
            yield {"scene": scene.name, "camera": "unknown", "label": str(scene), "items": direct}
        for cam in cams:
            yield {"scene": scene.name, "camera": cam.name, "label": str(cam), "items": images_in(cam)}


def _has_image(folder):
    return any(p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".") and p.is_file()
               for p in folder.iterdir())


def image_depths(folder, depth=1, most=4):
    """{depth: an example folder} of the levels under `folder` (1 = its own sub-folders) holding images,
    down to `most` levels, each level stopping at the first folder with images."""
    found = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _has_image(d):
            found.setdefault(depth, d)
        elif depth < most:
            for k, v in image_depths(d, depth + 1, most).items():
                found.setdefault(k, v)
    return found


def layout_note(root):
    """A warning when the images under `root` do not all lie at one of the depths read (root/SCENE/*.jpg or
    root/SCENE/CAMERA/*.jpg) in one way: often FRAMES_DIR is the parent of several datasets; or None."""
    root = Path(root)
    per_scene = {}
    for scene in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        depths = {k + 1: v for k, v in image_depths(scene).items()}
        depths.update({1: scene} if _has_image(scene) else {})
        if depths:
            per_scene[scene] = depths
    levels = {min(d) for d in per_scene.values()}
    deep = {k: v for d in per_scene.values() for k, v in d.items() if k > 2}
    if not deep:  # scenes/*.jpg beside scenes/CAMERA/*.jpg is a layout read as meant
        return None
    words = {1: "images directly in SCENE", 2: "images in SCENE/CAMERA"}
    counts = ", ".join(f"{sum(min(d) == k for d in per_scene.values())} with "
                       f"{words.get(k, f'images {k} levels down')}" for k in sorted(levels))
    example = f"; e.g. {deep[min(deep)]} is {min(deep)} levels down and is not read" if deep else ""
    return (f"warning: {root}: its {len(per_scene)} sub-folders are laid out differently "
            f"({counts}{example}); assumed {root}/SCENE/*.jpg or {root}/SCENE/CAMERA/*.jpg. If {root} "
            f"holds several datasets, pass each one as its own root: FRAMES_DIR=\"{root}/A {root}/B\" "
            f"(--frames-dir A B)")


def manifest_path(frame, out_dir):
    """How a manifest in `out_dir` records `frame`: relative to out_dir, computed from both paths as the user
    gave them (made absolute, symlinks kept: resolving them made paths climb to / and back down the link's
    target). Absolute, as given, when the two share nothing but the filesystem root, or when no relative path
    leads from out_dir to the same file (an out_dir reached through a symlink, where `..` leaves its
    target)."""
    absolute = os.path.abspath(frame)
    try:
        common = os.path.commonpath([absolute, out_dir])
    except ValueError:  # Windows: another drive
        common = None
    if common is None or common == os.path.dirname(common):
        return absolute.replace(os.sep, "/")
    rel = os.path.relpath(absolute, out_dir)
    existing = out_dir  # out_dir may not exist yet: its nearest existing folder decides where `..` leads
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    check = os.path.relpath(absolute, existing)
    for base in (existing, os.path.realpath(existing)):  # readers may resolve the manifest's folder first
        target = os.path.join(base, check)
        if not (os.path.exists(target) and os.path.samefile(target, absolute)):
            return absolute.replace(os.sep, "/")
    return rel.replace(os.sep, "/")


def frames_manifest(args):
    """`frames` command: scene (and camera) folders -> clips -> --output."""
    check_window(args.frames, args.stride)
    seqs, where = [], {}
    for root in args.frames_dir:  # several roots (FRAMES_DIR="A B"): one manifest
        found = list(folder_sequences(root))
        if not found:  # often FRAMES_DIR pointing at one scene's images instead of at the folder of scenes
            raise cli.UserError(f"{root}: no scene sub-folders; expected FRAMES_DIR/SCENE/*.jpg "
                                 f"or FRAMES_DIR/SCENE/CAMERA/*.jpg")
        note = layout_note(root)
        if note:
            print(note)
        for seq in found:
            if where.setdefault(seq["scene"], root) != root:
                raise cli.UserError(f"{root}: scene {seq['scene']!r} is also in {where[seq['scene']]}; "
                                     f"clip ids would clash: rename one of the folders")
        seqs += found
    out_dir = os.path.dirname(os.path.abspath(args.output))
    rows = []
    for seq, start, window in cut(seqs, args.frames, args.stride):
        # Paths relative to the manifest's folder, which jepa resolves against by default:
        # no DATA_ROOT needed.
        # No `timestamps`: file names carry no timing, and invented ones would pass for real microseconds.
        rows.append({"clip_id": f"{seq['scene']}__{seq['camera']}__{start:06d}", "split": None,
                     "scene_id": seq["scene"], "camera": seq["camera"],
                     "frame_paths": [manifest_path(p, out_dir) for p in window]})
    write_manifest(args.output, rows,
                   *split_chooser(args.split, {}, {r["scene_id"] for r in rows}, args.seed))


# ---- folders of videos ----

def resampled(info, fps):
    """Indices of the frames kept when the stream is resampled to `fps` (by presentation time; None: all)."""
    pts, tb = info["pts"], info["time_base"]
    if not fps:
        return list(range(len(pts)))
    kept, tick = [], -1
    for i, p in enumerate(pts):
        t = int((p - pts[0]) * tb * fps + 1e-6)
        if t > tick:
            kept.append(i)
            tick = t
    return kept


def video_files(videos_dir):
    """(scene, camera, path) per file: VIDEOS_DIR/FILE (scene = file name, camera unknown) and
    VIDEOS_DIR/SCENE/CAMERA.ext (camera = file name), naturally sorted; hidden files are ignored."""
    root = Path(videos_dir)
    if not root.is_dir():
        raise cli.UserError(f"{root}: videos folder not found (VIDEOS_DIR= a folder of video files)")
    visible = lambda p: sorted((q for q in p.iterdir() if not q.name.startswith(".")),
                               key=lambda q: natural_key(q.name))
    for entry in visible(root):
        if entry.is_file():
            yield entry.stem, "unknown", entry
        elif entry.is_dir():
            for f in visible(entry):
                if f.is_file():
                    yield entry.name, f.stem, f


def videos_manifest(args):
    """`videos` command: video files -> clips of --frames frames every --stride (after --fps) -> --output."""
    import video
    check_window(args.frames, args.stride)
    if args.fps is not None and args.fps <= 0:
        raise cli.UserError(f"--fps {args.fps}: must be > 0 (leave FPS= out to keep every frame)")
    video.import_av()
    out_dir = os.path.dirname(os.path.abspath(args.output))
    rows, skipped = [], []
    for scene, camera, path in video_files(args.videos_dir):
        if not video.is_video_path(path):
            skipped.append(f"{path}: not a video file (extension {path.suffix or 'none'})")
            continue
        try:
            info = video.probe(str(path))
        except OSError as e:
            skipped.append(f"{path}: {e}")
            continue
        items = resampled(info, args.fps)
        seq = {"scene": scene, "camera": camera, "label": str(path), "items": items}
        for _, start, window in cut([seq], args.frames, args.stride):
            rows.append({"clip_id": f"{scene}__{camera}__{window[0]:06d}", "split": None, "scene_id": scene,
                         "camera": camera, "video": manifest_path(path, out_dir), "frame_indices": window,
                         "timestamps": video.timestamps_us(str(path), window)})
    for line in skipped[:MAX_LISTED]:
        print(f"warning: skipped {line}", file=sys.stderr)
    if len(skipped) > MAX_LISTED:
        print(f"warning: ... and {len(skipped) - MAX_LISTED} more skipped file(s)", file=sys.stderr)
    write_manifest(args.output, rows,
                   *split_chooser(args.split, {}, {r["scene_id"] for r in rows}, args.seed))
    print(f"videos: {len({r['video'] for r in rows})} used, {len(skipped)} skipped (not video or unreadable)"
          f", {'every frame' if not args.fps else f'resampled to {args.fps:g} fps'}")


# ---- check ----

def image_header(path):
    """("WxH", EXIF orientation) from the image header; orientation 1 means upright."""
    with Image.open(path) as im:
        return f"{im.size[0]}x{im.size[1]}", im.getexif().get(0x0112, 1)


def check_manifest(args):
    """Summary on stdout, warnings on stderr; UserError (exit 1) with every error, in the messages train.py
    uses."""
    if not args.manifest:
        raise cli.UserError("--manifest: pass MANIFEST=path/to/clips.jsonl")
    tubelet = args.tubelet_size or cli.load_config()["data"]["tubelet_size"]
    records, parse_errors = parse_manifest(args.manifest, args.data_root, tubelet)
    errors, warnings, status, sizes, owner = Problems(), Problems(), {}, Counter(), {}
    for e in parse_errors:
        errors.add(e)
    for rec in records:
        where = f"{args.manifest}:{rec['line']}"
        if rec.get("video"):
            errors += _check_video(rec, args.manifest, decode=True)
            status.setdefault(rec["video"], None)
            sizes.update([_video_size(rec["video"])])
        for f in ([] if rec.get("video") else rec["frames"]):
            if f not in status:  # overlapping clips share frames: decode each file once
                status[f] = frame_problem(f, decode=True)
                if status[f] is None:
                    size, orientation = image_header(f)
                    sizes[size] += 1
                    # the research pipeline never transposes: such a frame is fed sideways
                    if orientation != 1:
                        warnings.add(f"{where}: frame {f}: EXIF orientation {orientation} is ignored "
                                     "(frames are used as stored); rotate the file if it is meant upright",
                                     "EXIF orientation ignored")
            if status[f]:
                errors.add_frame(where, f, status[f])
        earlier = [owner[f] for f in rec["frames"] if owner.get(f, rec) is not rec]
        if earlier:  # fine for overlapping windows (stride < frames), a mistake otherwise
            warnings.add(f"{where}: {len(earlier)} frame(s) also in clip {earlier[0]['clip_id']!r} "
                         f"(line {earlier[0]['line']})", "frames also in another clip")
        for f in rec["frames"]:
            owner.setdefault(f, rec)
    splits = Counter(r["split"] or "no split (drawn at training)" for r in records)
    cams = Counter(r["camera"] for r in records)
    listing = lambda counts, unit="": ", ".join(f"{k} {v}{unit}" for k, v in sorted(counts.items())) or "none"
    print(f"manifest: {args.manifest}\nclips: {len(records)} ({listing(splits)})"
          f"\nscenes: {len({r['scene'] for r in records})}\ncameras: {len(cams)} ({listing(cams, ' clips')})"
          f"\nframes: {sum(len(r['frames']) for r in records)} in clips, {len(status)} distinct files"
          f"\nimage sizes: {listing(sizes, ' files')}")
    derived = sum(r["id_derived"] for r in records)
    if derived:
        print(f"clip ids: {derived} of {len(records)} derived ({DERIVED_ID_RULE})")
    for w in warnings.lines():
        print(f"warning: {w}", file=sys.stderr)
    errors.raise_if_any([f"{len(errors):,} error(s), {len(warnings):,} warning(s): fix the errors before "
                         f"encoding"], code=1, frames_total=sum(len(r["frames"]) for r in records))
    print(f"OK: no errors, {len(warnings)} warning(s)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, help="nuscenes, frames, videos or check")

    def window_flags(q):
        q.add_argument("--frames", type=int, default=16, help="frames per clip (at least one tubelet)")
        q.add_argument("--stride", type=int, default=16,
                       help="frames between clip starts (= --frames: no overlap)")
        q.add_argument("--split", choices=("train", "val", "test"), help="give every clip this split")
        q.add_argument("--seed", type=int, default=0,
                       help="seed of the 80/20 scene split outside official lists")
        q.add_argument("--output", required=True, help="manifest to write (JSONL; folders are created)")

    n = sub.add_parser("nuscenes", help="clips from a nuScenes download")
    n.add_argument("--dataroot", required=True, help="nuScenes folder holding VERSION/, samples/ and sweeps/")
    n.add_argument("--version", default="v1.0-mini",
                   help="metadata folder: v1.0-mini, v1.0-trainval, v1.0-test")
    n.add_argument("--cameras", default="CAM_FRONT", help="camera channels, comma separated, or all")
    n.add_argument("--source", choices=("samples", "sweeps"), default="samples",
                   help="samples: key frames (2 Hz); sweeps: every camera frame (~12 Hz)")
    window_flags(n)
    f = sub.add_parser("frames", help="clips from one folder of frames per scene")
    f.add_argument("--frames-dir", required=True, nargs="+",
                   help="folder(s) of scene folders (optionally scene/camera/); several: one manifest")
    window_flags(f)
    v = sub.add_parser("videos", help="clips from a folder of video files (one scene per file)")
    v.add_argument("--videos-dir", required=True, help="folder of videos (FILE or SCENE/CAMERA.mp4)")
    v.add_argument("--fps", type=float, help="resample each stream to this rate first (default: every frame)")
    window_flags(v)
    c = sub.add_parser("check", help="validate a manifest and its frames before encoding")
    c.add_argument("--manifest", required=True, help="JSONL manifest to check")
    c.add_argument("--data-root",
                   help="folder relative frame paths resolve against (default: the manifest's)")
    c.add_argument("--tubelet-size", type=int,
                   help="frames per tubelet (default: data.tubelet_size of config.yaml)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return {"nuscenes": nuscenes_manifest, "frames": frames_manifest,
            "videos": videos_manifest, "check": check_manifest}[args.command](args)


if __name__ == "__main__":
    cli.run_cli(main)
