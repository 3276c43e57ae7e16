"""Video input: frames read straight from MP4/HEVC files with PyAV (`av`, imported only when a video is read).

A manifest line {"video": "drives/0001_front.mp4", "frame_indices": [0, 2, ...]} (or "start_s" + "num_frames"
+ "every") becomes a clip whose `frames` are references `PATH#frame=N`: N indexes the decoded stream in
presentation order (pts), so variable-frame-rate files are exact. jepa.load_frame reads a reference with
read_frame below, then the RGB frame takes the same resize path as a decoded JPEG.

Each process keeps a few containers open (OPEN_FILES) with the decoder's position: the next wanted frame of
the same file is decoded forward from there; a frame behind it, or far ahead, seeks to the keyframe before it
and decodes forward. Only the frame being decoded is held, whatever the file's length.
"""
import os
import re
from collections import OrderedDict
from functools import lru_cache

import numpy as np

import cli

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".m4v", ".hevc", ".h265", ".h264", ".ts", ".webm"}
INSTALL_HINT = "video input needs PyAV: .venv/bin/pip install av==18.1.0 (or pip install -r requirements.txt)"
REF = re.compile(r"^(.*)#frame=(-?\d+)$")
OPEN_FILES = 4          # open containers per process
FORWARD_GAP = 300       # decode forward instead of seeking when the wanted frame is at most this far ahead


def import_av():
    """The av module, or cli.UserError with the one-line install command."""
    try:
        import av
    except ImportError:
        raise cli.UserError(INSTALL_HINT) from None
    return av


def is_video_path(path):
    return os.path.splitext(str(path))[1].lower() in VIDEO_EXTS


def ref(path, index):
    return f"{path}#frame={index}"


def parse_ref(frame):
    """(video path, frame index) of a `PATH#frame=N` reference, or None for a plain frame path."""
    m = REF.match(str(frame)) if "#frame=" in str(frame) else None
    return (m.group(1), int(m.group(2))) if m else None


@lru_cache(maxsize=64)
def probe(path):
    """{'pts': sorted presentation times (stream time base), 'time_base', 'codec', 'duration_s', 'width',
    'height'} read by demuxing only (no decoding). Raises OSError with why the file cannot be used."""
    problem = cli.special_file_problem(path)
    if problem:
        raise OSError(problem)
    if os.path.getsize(path) == 0:
        raise OSError("zero-byte file")
    av = import_av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise OSError("no video stream")
            if "image2" in c.format.name or c.format.name.endswith("_pipe"):
                raise OSError(f"an image ({c.format.name}), not a video")
            s = c.streams.video[0]
            pts = sorted(p.pts for p in c.demux(s) if p.pts is not None and p.size)
            info = {"pts": tuple(pts), "time_base": float(s.time_base), "codec": s.codec_context.name,
                    "width": s.codec_context.width, "height": s.codec_context.height}
    except av.FFmpegError as e:
        raise OSError(f"not a readable video ({e})") from None
    if not pts:
        raise OSError("no frames in the video stream")
    info["duration_s"] = (pts[-1] - pts[0]) * info["time_base"]
    return info


def timestamps_us(path, indices):
    """Presentation times (µs, from the stream's first frame) of frames `indices`; None when unreadable."""
    try:
        info = probe(path)
    except (OSError, cli.UserError):
        return None
    pts = info["pts"]
    if any(not 0 <= i < len(pts) for i in indices):
        return None
    return [round((pts[i] - pts[0]) * info["time_base"] * 1e6) for i in indices]


def indices_from_start(path, start_s, num_frames, every):
    """Frame indices of a start_s/num_frames/every line: the first frame at or after start_s (by pts), then
    every `every`-th frame. Raises OSError when the file is unreadable or too short."""
    info = probe(path)
    pts, tb = info["pts"], info["time_base"]
    first = next((i for i, p in enumerate(pts) if (p - pts[0]) * tb >= start_s - 1e-6), None)
    if first is None or first + (num_frames - 1) * every >= len(pts):
        raise OSError(f"{len(pts)} frames, too short for start_s={start_s} num_frames={num_frames} "
                      f"every={every}")
    return [first + k * every for k in range(num_frames)]


class _Open:
    """One open container: its decoder iterator and the index of the last frame it returned."""

    def __init__(self, path):
        av = import_av()
        self.info = probe(path)
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.index_of = {p: i for i, p in enumerate(self.info["pts"])}
        self.frames, self.last = None, None

    def seek(self, index):
        self.container.seek(self.info["pts"][index], stream=self.stream, backward=True, any_frame=False)
        self.frames, self.last = self.container.decode(self.stream), None

    def get(self, index):
        if self.frames is None or self.last is None or not self.last < index <= self.last + FORWARD_GAP:
            self.seek(index)
        for frame in self.frames:
            i = self.index_of.get(frame.pts)
            if i is None:
                continue
            self.last = i
            if i == index:
                return frame
            if i > index:  # the seek landed past it (should not happen with backward=True)
                break
        self.frames = None
        raise OSError(f"frame {index} did not decode (truncated or corrupt file?)")

    def close(self):
        self.container.close()


_OPEN = OrderedDict()  # path -> _Open, per process (loader workers are forked: keyed with the pid)


def _opened(path):
    key = (os.getpid(), str(path))
    for k in [k for k in _OPEN if k[0] != os.getpid()]:
        _OPEN.pop(k)  # a forked worker never uses its parent's decoders
    if key in _OPEN:
        _OPEN.move_to_end(key)
        return _OPEN[key]
    opened = _Open(path)
    _OPEN[key] = opened
    while len(_OPEN) > OPEN_FILES:
        _OPEN.popitem(last=False)[1].close()
    return opened


def rotated(rgb, degrees):
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV reports it)."""
    turns = round((degrees or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def read_frame(path, index):
    """Frame `index` of the video at `path` as a PIL RGB image, rotation metadata applied.
    Raises OSError (cli.UserError when av is missing)."""
    from PIL import Image
    av = import_av()
    try:
        opened = _opened(path)
        if not 0 <= index < len(opened.info["pts"]):
            raise OSError(f"frame {index} out of range (the stream has {len(opened.info['pts'])} frames)")
        frame = opened.get(index)
        rgb = rotated(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0))
    except av.FFmpegError as e:
        _OPEN.pop((os.getpid(), str(path)), None)
        raise OSError(f"not a readable video ({e})") from None
    return Image.fromarray(rgb)


def video_problem(path, indices, decode=True):
    """Why frames `indices` of a video cannot be used (missing, not a video, truncated...), or None."""
    try:
        info = probe(path)
        missing = [i for i in indices if not 0 <= i < len(info["pts"])]
        if missing:
            return f"frame {missing[0]} out of range (the stream has {len(info['pts'])} frames)"
        if decode:
            for i in indices:
                read_frame(path, i)
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return str(e)
    return None
