"""One self-contained HTML page for deciding which of the clips infer.py scored go to labelling.

Usage:
  python report.py --scores experiments/RUN/scores.jsonl --output report.html
  python report.py --scores S --manifest clips.jsonl [--data-root R] [--labels L]
                   [--selection selection.jsonl] [--top 50] [--bottom 10] --output report.html

Per listed clip: an animated preview (WebP, the peak tubelet marked PEAK), a strip of stills, the novelty of
each tubelet, its time span, score percentile and label; clicking the preview opens a large view with the
clip's full-size frames. With --labels the page shows the ranking metrics eval.py reports (trained score vs a
random ranking) and the known positives the ranking missed. With --selection (selection.jsonl from
`make select`) it lists the picks with their folded near-duplicates, pre-checked for export. Checkboxes and
"copy / download selected" export clip_id, scene, camera, score, first/last frame and timestamps.

Everything is inlined (images as data URIs, charts as SVG, one small script for the export buttons), so the
page opens from disk offline; without scripts all but the export buttons still work. Frame links and the
large view's full-size frames are relative to the report, so the page and the frames folder move together.
"""
import argparse
import base64
import bisect
import csv
import datetime
import functools
import html
import io
import json
import math
import os
import urllib.parse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import numpy as np

import cli
import ranking
import scorefile
from scorefile import is_number as _number, is_timestamp, read_meta
from eval import rank_order, read_labels
from manifest import read_jsonl, read_manifest
from selection import read_selection

THUMB_SIZE = (160, 120)  # box a still fits in: ~4 KB as JPEG
THUMB_QUALITY = 70
PREVIEW_BOX = (240, 135)  # animated preview: ~60 KB for 16 real 720p frames, so TOP=50 stays well under 10 MB
PREVIEW_QUALITY = 55
FRAME_MS = (100, 500, 200)  # preview frame time: the real gap clamped to [min, max] ms; without stamps: 200
EPOCH_US = 1e14  # timestamps (µs) past this are dates (nuScenes), smaller ones offsets into a video
EXPORT_FIELDS = ("clip_id", "scene", "camera", "score", "first_frame", "last_frame", "first_timestamp",
                 "last_timestamp")
PEAK_RGB = (232, 89, 12)
MAX_BARS = 200  # bars in a clip's tubelet chart: a longer clip's tubelets are grouped (the page stays small)


# ---- reading inputs ----

def read_scores(path):
    """infer.py's scores JSONL -> list of clip dicts in file order (scorefile.clip_dict: a NaN/inf or null
    score is a failed clip)."""
    return [scorefile.clip_dict(obj) for _, _, obj in scorefile.lines(path)]


# ---- images ----

def load_small(path, box=PREVIEW_BOX):
    """The image at `path` fitted into `box` (RGB), or None when it is missing or unreadable."""
    if "#frame=" in str(path):  # a frame of a video (video.py): decoded from the file
        return _video_small(path, box)
    if cli.special_file_problem(path):  # a FIFO would block forever: only regular files are opened
        return None
    try:
        with Image.open(path) as im:
            im.draft("RGB", box)  # JPEG: decode at a reduced scale, much faster for large frames
            im = im.convert("RGB")
            im.thumbnail(box)
            return im
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _video_small(path, box):
    import video
    where = video.parse_ref(path)
    try:
        im = video.read_frame(*where)
    except (OSError, cli.UserError):
        return None
    im.thumbnail(box)
    return im


def jpeg_uri(im):
    im = im.copy()
    im.thumbnail(THUMB_SIZE)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=THUMB_QUALITY)
    return data_uri(buf.getvalue(), "image/jpeg")


def data_uri(data, mime):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def thumbnail(path):
    """A small JPEG data URI of an image file, or None when it is missing or unreadable."""
    im = load_small(path, THUMB_SIZE)
    return jpeg_uri(im) if im else None


def spaced(n, count, extra=()):
    """Up to `count` evenly spaced frame indices of an n-frame clip (first and last in), plus `extra`."""
    picks = {round(j * (n - 1) / (count - 1)) for j in range(count)} if count > 1 and n > 1 else {0}
    return sorted(picks | set(extra))


def frame_ms(stamps, indices):
    """Per preview frame, how long it shows: the real gap to the next frame, clamped to FRAME_MS."""
    lo, hi, default = FRAME_MS
    if not stamps:
        return [default] * len(indices)
    gaps = [(stamps[b] - stamps[a]) / 1000 for a, b in zip(indices, indices[1:])]
    gaps.append(gaps[-1] if gaps else default)
    return [int(min(max(g, lo), hi)) for g in gaps]


def marked_frame(im, size, i, n, peak_frames, font):
    """One preview frame: a timeline along the bottom (peak tubelet span, cursor at this frame), the frame
    number, and on the peak tubelet's frames an outline plus the word PEAK (colour is not the only cue)."""
    frame = Image.new("RGB", size, (200, 200, 200)) if im is None else im.resize(size)  # resize: a copy
    w, h = size
    d = ImageDraw.Draw(frame)
    d.rectangle([0, h - 7, w, h], fill=(30, 30, 30))
    if peak_frames:
        d.rectangle([peak_frames[0] / n * w, h - 7, (peak_frames[-1] + 1) / n * w, h], fill=PEAK_RGB)
    x = (i + 0.5) / n * w
    d.polygon([(x - 5, h - 1), (x + 5, h - 1), (x, h - 10)], fill="white", outline="black")
    d.text((w - 4, 3), f"f{i}", font=font, fill="white", anchor="ra", stroke_width=2, stroke_fill="black")
    if im is None:
        d.text((w / 2, h / 2), "no image", font=font, fill="black", anchor="mm")
    if i in peak_frames:
        d.rectangle([0, 0, w - 1, h - 8], outline=PEAK_RGB, width=3)
        d.rectangle([3, 3, 44, 18], fill=PEAK_RGB)
        d.text((6, 4), "PEAK", font=font, fill="black")
    return frame


def preview_uri(images, indices, n, peak_frames, stamps):
    """Animated WebP data URI of the frames at `indices` (`images(i)` gives each fitted frame or None)."""
    fitted = [images(i) for i in indices]
    size = next((im.size for im in fitted if im), None)
    if size is None:
        return None
    font = ImageFont.load_default(12)
    frames = [marked_frame(im, size, i, n, peak_frames, font) for im, i in zip(fitted, indices)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=frame_ms(stamps, indices),
                   loop=0, quality=PREVIEW_QUALITY, method=2)  # 2: half the time of 4, +5% size
    return data_uri(buf.getvalue(), "image/webp")


# ---- per-clip facts ----

def esc(text):
    return html.escape(str(text), quote=True)


def link(path, out_dir):
    """URL of a file for href/src: relative to the report's folder, so the page and the frames move together;
    a file:// URI where no relative path exists (another drive on Windows)."""
    try:
        return urllib.parse.quote(Path(os.path.relpath(Path(path).absolute(), out_dir)).as_posix())
    except ValueError:
        return Path(path).absolute().as_uri()


def clock(us):
    if us < EPOCH_US:
        return f"{us / 1e6:.2f} s"
    when = datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def offset(f, i):
    """Seconds from the clip's first frame to frame i."""
    return (f["stamps"][i] - f["stamps"][0]) / 1e6


def time_span(stamps):
    if not stamps:
        return "no timestamps"
    return f"{clock(stamps[0])} &rarr; {clock(stamps[-1])} ({(stamps[-1] - stamps[0]) / 1e6:.2f} s long)"


def peak_tubelet(tubs):
    return max(range(len(tubs)), key=tubs.__getitem__) if tubs else None


def clip_facts(clip, record, tubelet_size):
    """Frames, timestamps and the peak tubelet's frames of a scored clip, plus its export fields."""
    frames = record["frames"] if record else [clip["first_frame"]] if clip.get("first_frame") else []
    stamps = record.get("timestamps") if record else None
    if not (isinstance(stamps, list) and len(stamps) == len(frames) and all(map(is_timestamp, stamps))):
        stamps = None  # a manifest may carry none, text or NaN; the page then shows no times
    tubs, n = clip["tubelet_scores"], len(frames)
    size = tubelet_size or max(n // max(len(tubs), 1), 1)  # infer.py drops only a remainder
    peak = peak_tubelet(tubs) if record else None  # without the manifest the frames of a tubelet are unknown
    peak_frames = [f for f in range(peak * size, (peak + 1) * size) if f < n] if peak is not None else []
    peak = peak if peak_frames else None  # more tubelets than frames: scores from another manifest
    return {**clip, "frames": frames, "stamps": stamps, "peak": peak, "peak_frames": peak_frames,
            "first_frame": frames[0] if frames else None, "last_frame": frames[-1] if record else None,
            "first_timestamp": stamps[0] if stamps else None,
            "last_timestamp": stamps[-1] if stamps else None,
            "small": functools.lru_cache(maxsize=None)(lambda i: load_small(frames[i]))}  # decoded once


def peak_words(f):
    """The peak tubelet in words (the bars and outline say it in colour and shape)."""
    tubs = f["tubelet_scores"]
    if f["peak"] is None:
        return f"peak: tubelet t{peak_tubelet(tubs)} of {len(tubs)}" if tubs else "no tubelet scores"
    a, b = f["peak_frames"][0], f["peak_frames"][-1]
    when = f", {offset(f, a):.2f}&ndash;{offset(f, b):.2f} s into the clip" if f["stamps"] else ""
    return f"peak: tubelet t{f['peak']} of {len(tubs)} (frames f{a}&ndash;f{b}{when})"


def export_row(d):
    return {k: d.get(k) for k in EXPORT_FIELDS}


def csv_line(row):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(["" if v is None else v for v in row.values()])
    return buf.getvalue()


def pick_box(d, checked):
    """The export checkbox of one clip; the CSV and JSONL lines it exports are embedded in it."""
    row = export_row(d)
    return (f'<input type="checkbox" class="pick" aria-label="select for export" title="select for export" '
            f'data-id="{esc(d["clip_id"])}" data-csv="{esc(csv_line(row))}" '
            f'data-json="{esc(json.dumps(row, ensure_ascii=False))}"{" checked" if checked else ""}>')


# ---- HTML pieces ----

def svg_bars(values, vmax, width=200, height=50):
    """Per-tubelet scores as a small bar chart on the report-wide scale `vmax`; the peak bar is orange and
    carries a triangle and the word "peak" (for readers who cannot tell the colours apart)."""
    if not values:
        return '<span class="muted">no tubelet scores</span>'
    n, peak, top = len(values), peak_tubelet(values), 22  # room for the peak label
    group = -(-n // MAX_BARS)  # a clip of thousands of tubelets: one bar per group, its highest score
    shown = [max(values[i:i + group]) for i in range(0, n, group)]
    bw = width / len(shown)
    bars = []
    for i, v in enumerate(shown):
        h = max(v, 0) / vmax * (height - 2) if vmax > 0 else 0
        what = f"tubelet {i}" if group == 1 else f"tubelets {i * group}-{min(n, (i + 1) * group) - 1}, max"
        bars.append(f'<rect x="{i * bw + 1:.1f}" y="{top + height - h:.1f}" width="{max(bw - 2, 1):.1f}" '
                    f'height="{h:.1f}" class="{"pk" if i == peak // group else "b"}"><title>{what}: {v:.4f}'
                    f'</title></rect>')
    x = (peak // group + 0.5) * bw
    y = top + height - (max(values[peak], 0) / vmax * (height - 2) if vmax > 0 else 0)
    anchor = "start" if x < width / 3 else "end" if x > width * 2 / 3 else "middle"
    return (f'<svg width="{width}" height="{top + height + 14}" role="img" aria-label="tubelet scores, peak '
            f't{peak}">{"".join(bars)}<path d="M{x - 4:.1f},{y - 9:.1f}h8l-4,7z" class="pkm"/>'
            f'<text x="{x:.1f}" y="{y - 10:.1f}" text-anchor="{anchor}" class="pkt">peak t{peak}</text>'
            f'<line x1="0" x2="{width}" y1="{top + height}" y2="{top + height}" class="ax"/>'
            f'<text x="0" y="{top + height + 12}">t0</text><text x="{width}" y="{top + height + 12}" '
            f'text-anchor="end">t{len(values) - 1}</text></svg>')


def svg_histogram(scores, top, cut=None, bins=30, width=760, height=140):
    """Score histogram; `cut` = (K-th, K+1-th highest score) marks the top-K cut-off halfway between them."""
    lo, hi = min(scores), max(scores)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for s in scores:
        counts[min(int((s - lo) / span * bins), bins - 1)] += 1
    bw, cmax, left, base = width / bins, max(counts), 40, 22 + height  # 22 px on top for the cut-off label
    parts = [f'<rect x="{left + i * bw + 0.5:.1f}" y="{base - c / cmax * height:.1f}" width="{bw - 1:.1f}" '
             f'height="{c / cmax * height:.1f}" class="b"><title>{c} clip(s)</title></rect>'
             for i, c in enumerate(counts) if c]
    parts += [f'<line x1="{left}" x2="{left + width}" y1="{base}" y2="{base}" class="ax"/>',
              f'<text x="{left}" y="{base + 16}">{lo:.4f}</text>',
              f'<text x="{left + width}" y="{base + 16}" text-anchor="end">{hi:.4f}</text>',
              f'<text x="{left + width / 2}" y="{base + 16}" text-anchor="middle">novelty score</text>',
              f'<text x="{left - 6}" y="{base - height + 8}" text-anchor="end">{cmax}</text>',
              f'<text x="{left - 6}" y="{base - height + 22}" text-anchor="end">clips</text>']
    if cut:
        at = left + (sum(cut) / 2 - lo) / span * width
        east = at < left + width / 2  # the label goes on the side of the line that has room
        parts.append(f'<line x1="{at:.1f}" x2="{at:.1f}" y1="4" y2="{base}" class="cut"/>'
                     f'<text x="{at + (4 if east else -4):.1f}" y="14" class="cut" '
                     f'text-anchor="{"start" if east else "end"}">top {top}: score &#8805; {cut[0]:.4f}'
                     f'</text>')
    return (f'<svg width="{left + width + 10}" height="{base + 22}" role="img" aria-label="score histogram">'
            f'{"".join(parts)}</svg>')


class Page:
    """What every clip card needs to know about the whole page."""

    def __init__(self, clips, args, meta, records, labels, picks):
        self.args, self.labels, self.records = args, labels, records
        self.out_dir = Path(args.output).absolute().parent
        self.scored = [c for c in clips if c["score"] is not None]
        self.by_id = {c["clip_id"]: c for c in self.scored}
        self.order = [self.by_id[c] for c in rank_order({c["clip_id"]: c["score"] for c in self.scored})]
        self.ranks = {c["clip_id"]: i for i, c in enumerate(self.order, 1)}
        self.sorted_scores = sorted(c["score"] for c in self.scored)
        self.tubelet_size = meta.get("tubelet_size") if isinstance(meta.get("tubelet_size"), int) else None
        self.top = self.order[:args.top]
        self.bottom = self.order[max(len(self.order) - args.bottom, len(self.top)):][::-1]  # lowest first
        self.picks = {p["clip_id"]: p for p in picks}
        self.pick_clips = [self.by_id[p["clip_id"]] for p in picks if p["clip_id"] in self.by_id]
        self.shown = {c["clip_id"] for c in self.top + self.bottom}
        self.vmax = max((v for c in self.top + self.bottom + self.pick_clips for v in c["tubelet_scores"]),
                        default=0)
        self.folded = {d["clip_id"]: p["rank"] for p in picks for d in p["near_duplicates"]}

    def facts(self, clip):
        return clip_facts(clip, self.records.get(clip["clip_id"]), self.tubelet_size)

    def percentile(self, score):
        """Share of the other scored clips that score lower, in words."""
        n, below = len(self.sorted_scores), bisect.bisect_left(self.sorted_scores, score)
        pct = 100 * below / (n - 1) if n > 1 else 100.0
        return f"percentile {pct:.0f}: above {below} of the other {n - 1} scored clips"

    def low_note(self, pick):
        """Why a pick below the middle of the ranking (or below the top list) is in the selection, or "". Only
        when clips above it were passed over (its raw rank is below its pick rank): a batch larger than the
        top list whose picks are simply the next ranks needs no excuse."""
        rank, clip = self.ranks.get(pick["clip_id"]), self.by_id.get(pick["clip_id"])
        if rank is None or rank <= pick["rank"]:
            return ""
        n, below = len(self.sorted_scores), bisect.bisect_left(self.sorted_scores, clip["score"])
        if not (rank > len(self.top) or (n > 1 and below / (n - 1) < 0.5)):
            return ""
        return (f' <span class="low">&middot; low novelty (raw rank #{rank} of {n}): picked because the '
                f'batch ran out of distinct clips above it; every higher-scoring clip was folded into an '
                f'earlier pick as a near-duplicate or by the scene quota</span>')

    def label_words(self, clip_id):
        if self.labels is None:
            return ""
        if clip_id not in self.labels:
            return '<span class="lab">label: none (not in the labels file)</span>'
        words = {1: "1 (positive)", 0: "0 (negative)", None: "null (unlabelled)"}
        return f'<span class="lab">label: {words[self.labels[clip_id]]}</span>'

    def is_miss(self, clip_id):
        """A known positive ranked below the top list."""
        return bool(self.labels) and self.labels.get(clip_id) == 1 and self.ranks[clip_id] > len(self.top)


def stills(page, f, target):
    """`--thumbs` evenly spaced stills plus the peak tubelet's first frame (outlined, captioned "peak")."""
    peak = f["peak_frames"][0] if f["peak_frames"] else None
    cells = []
    for i in spaced(len(f["frames"]), page.args.thumbs, f["peak_frames"][:1]):
        im = f["small"](i)
        img = f'<img src="{jpeg_uri(im)}" alt="frame {i}">' if im else '<div class="ph">no image</div>'
        cap = f"f{i} &#9650; peak" if i == peak else f"f{i}"
        cells.append(f'<figure class="t{" peak" if i == peak else ""}"><a href="#{target}">{img}</a>'
                     f'<figcaption>{cap}</figcaption></figure>')
    return "".join(cells)


def large_view(page, f, rank, words, anchor, view):
    """The overlay a click on the preview opens (CSS :target, no script): every frame of the clip full size,
    the peak tubelet's frames marked. Frames are CSS backgrounds because browsers fetch those only once the
    view is shown (a hidden <img>, even loading=lazy, loads with the page: up to ~1000 full frames)."""
    first = f["small"](0) if f["frames"] else None
    ratio = f"{first.width}/{first.height}" if first else "16/9"
    cells = []
    for i, path in enumerate(f["frames"]):
        url, peak = link(path, page.out_dir), i in f["peak_frames"]
        when = f" &middot; +{offset(f, i):.2f} s" if f["stamps"] else ""
        cells.append(f'<figure class="full{" peak" if peak else ""}"><a href="{esc(url)}" role="img" '
                     f'aria-label="frame {i}" style="background-image:url(&quot;{esc(url)}&quot;);'
                     f'aspect-ratio:{ratio}"></a><figcaption>f{i}{when}'
                     f'{" &#9650; PEAK tubelet" if peak else ""}</figcaption></figure>')
    return (f'<div class="view" id="{view}"><div class="box"><a class="close" href="#{anchor}">&#10005; '
            f'close</a><h3>#{rank} {esc(f["clip_id"])}</h3><div class="big"><p>{words}</p>'
            f'{svg_bars(f["tubelet_scores"], page.vmax, width=420, height=90)}</div><p class="muted">'
            f'Full-size frames, read from the frames folder next to this page (grey where it is not there); '
            f'click one to open the file.</p><div class="grid">{"".join(cells)}</div></div></div>')


LABEL_SCRIPT = r"""
window.jepaLabels = {};
(function () {
  let cur = 0;
  const cards = () => Array.from(document.querySelectorAll('article.clip'))
    .filter(c => c.querySelector('.labels'));
  document.querySelectorAll('button[data-lab],#labjsonl,#labcsv').forEach(b => { b.disabled = false; });
  function setLab(card, v) {
    const id = card.querySelector('.labels').dataset.cid;
    const who = document.getElementById('reviewer').value.trim();
    // source: how the clip came to be reviewed (eval.py warns that metrics on ranked picks are biased)
    window.jepaLabels[id] = {clip_id: id, binary_label: v === 'i' ? 1 : v === 'n' ? 0 : null,
                             reviewer: who || null, time: new Date().toISOString(),
                             source: card.id.startsWith('p') ? 'selection' : 'ranking'};
    document.querySelectorAll('.labels').forEach(c => {
      if (c.dataset.cid === id) c.querySelectorAll('button[data-lab]').forEach(
        b => b.classList.toggle('on', b.dataset.lab === v));
    });
    document.getElementById('labcount').textContent = Object.keys(window.jepaLabels).length + ' labelled';
  }
  document.addEventListener('click', e => {
    const b = e.target.closest('button[data-lab]');
    if (b) { setLab(b.closest('article.clip'), b.dataset.lab); cur = cards().indexOf(b.closest('article')); }
  });
  document.addEventListener('keydown', e => {
    if (e.target.tagName === 'INPUT' || e.ctrlKey || e.metaKey || e.altKey) return;
    const cs = cards();
    if (!cs.length) return;
    if (e.key === 'j' || e.key === 'k') {
      cur = Math.max(0, Math.min(cs.length - 1, cur + (e.key === 'j' ? 1 : -1)));
      cs.forEach((c, i) => c.classList.toggle('cur', i === cur));
      cs[cur].scrollIntoView({block: 'center'});
    } else if (['i', 'n', 'u'].includes(e.key)) setLab(cs[cur], e.key);
  });
  function save(text, name, type) {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([text], {type: type}));
    a.download = name; document.body.appendChild(a); a.click(); a.remove();
  }
  window.jepaLabelsJsonl = () => Object.values(window.jepaLabels).map(r => JSON.stringify(r) + '\n')
    .join('');
  window.jepaLabelsCsv = () => 'clip_id,binary_label,reviewer,time,source\n' +
    Object.values(window.jepaLabels).map(r => [r.clip_id, r.binary_label === null ? '' : r.binary_label,
                                               r.reviewer || '', r.time, r.source]
      .map(v => /[",\n]/.test(String(v)) ? '"' + String(v).replace(/"/g, '""') + '"' : v).join(',') + '\n')
    .join('');
  document.getElementById('labjsonl').onclick = () => save(jepaLabelsJsonl(), 'labels.jsonl',
                                                           'application/json');
  document.getElementById('labcsv').onclick = () => save(jepaLabelsCsv(), 'labels.csv', 'text/csv');
})();
"""
LABEL_CSS = ("button[data-lab].on{background:#2a6;color:#fff}article.clip.cur{outline:3px solid #f80}"
             ".labels{margin:4px 0}")


def label_bar():
    """The labels toolbar: reviewer name, count and the two exports (labels JSONL for make learn, CSV)."""
    return ('<div class="labelbar"><b>Labels</b> (buttons on each card; keys: j/k move, i interesting, '
            'n not interesting, u unsure; kept in this page only until exported) '
            '<label>reviewer <input id="reviewer" size="12"></label> <span id="labcount">0 labelled</span> '
            '<button id="labjsonl" disabled>export labels.jsonl</button> '
            '<button id="labcsv" disabled>export CSV</button></div>')


def label_buttons(page, cid):
    """A card's label buttons, and its p_interesting when the page has a probe."""
    p = getattr(page, "probe", {}).get(cid)
    prob = f'<span class="pint">p_interesting {p:.3f}</span><br>' if p is not None else ""
    return (f'{prob}<span class="labels" data-cid="{esc(cid)}"><button data-lab="i" disabled>interesting'
            f'</button><button data-lab="n" disabled>not</button>'
            f'<button data-lab="u" disabled>unsure</button></span><br>')


def clip_card(page, clip, anchor=None, extra=""):
    """One clip card, the only place cards are drawn (selection and ranking alike): pick box and facts,
    animated preview, stills, tubelet bars, and its large view. `anchor`: the card's id (default c<rank>;
    a selection card is p<pick rank>, so a clip can have a card in both lists); `extra`: HTML put under
    the facts (a pick's folded near-duplicates)."""
    f, rank, cid = page.facts(clip), page.ranks[clip["clip_id"]], clip["clip_id"]
    view = f"v{rank}" if anchor is None else f"v{anchor}"  # v<rank>, or vp<pick rank>
    anchor = anchor or f"c{rank}"
    n, miss, pick = len(f["frames"]), page.is_miss(cid), page.picks.get(cid)
    uri = preview_uri(f["small"], spaced(n, page.args.preview_frames, f["peak_frames"]), n, f["peak_frames"],
                      f["stamps"]) if page.args.preview_frames and n > 1 else None
    preview = (f'<img class="pv" src="{uri}" alt="animated preview of {n} frames, peak tubelet marked PEAK">'
               if uri else '<div class="ph pv">no preview</div>')
    folder = (f' &middot; <a href="{esc(link(Path(f["frames"][0]).parent, page.out_dir))}">frames folder</a>'
              if n else "")
    notes = [f"{esc(clip['scene'])} &middot; {esc(clip['camera'])}", time_span(f["stamps"]),
             page.percentile(clip["score"]), peak_words(f), page.label_words(cid)]
    notes += ['<span class="badge">&#9888; missed positive</span>'] if miss else []
    notes += [f"selection pick #{pick['rank']}{page.low_note(pick)}"] if pick else []
    notes += [f"folded under selection pick #{page.folded[cid]}"] if cid in page.folded else []
    words = "<br>".join(x for x in notes if x)
    strip = stills(page, f, view) if n else '<div class="ph">no frame path</div>'
    return (f'<article class="clip{" miss" if miss else ""}" id="{anchor}"><div class="info">'
            f'{pick_box(f, bool(pick))} <span class="rank">#{rank}</span> '
            f'<span class="score">{clip["score"]:.4f}</span><br>'
            f'<b class="cid">{esc(cid).replace("__", "__<wbr>")}</b><br>'  # wbr: wrap at __
            f'{label_buttons(page, cid)}{words}<br>'
            f'<a href="#{view}">large view</a>{folder}{extra}</div>'
            f'<a class="pvl" href="#{view}">{preview}</a>'
            f'<div class="side"><div class="strip">{strip}</div>{svg_bars(clip["tubelet_scores"], page.vmax)}'
            f'</div>{large_view(page, f, rank, words, anchor, view)}</article>')


def clip_list(page, clips):
    return "".join(clip_card(page, c) for c in clips)


def metrics_block(page):
    """The ranking table eval.py prints (ranking.compare: AP and AUROC with 95% bootstrap intervals, the
    paired differences and the verdict), for the trained score against the masked_gap baseline (when infer.py
    wrote it per clip) and a random ranking of the same clips (the untrained_head and knn_density baselines
    need the encoder or the run, so only eval.py has them). @K only for K up to the number of labelled clips:
    past that every clip is in the top K and the value says nothing."""
    labelled = sum(page.labels.get(c["clip_id"]) is not None for c in page.scored)
    all_ks = cli.load_config()["evaluation"]["k_values"]
    ks = [k for k in all_ks if k <= labelled]
    with_gap = bool(page.scored) and all(_number(c.get("masked_gap")) for c in page.scored)
    gap = ("masked_gap = the no-predictor baseline, 1 &minus; cos(masked, clean)" if with_gap
           else "no masked_gap row: these scores predate infer.py writing it (eval.py reports it)")
    hidden = [k for k in all_ks if k > labelled]
    dropped = (f"; @{', @'.join(map(str, hidden))} left out: only {labelled} scored clips are labelled"
               if hidden else "")
    table = ranking.format_table(compare_labelled(page.scored, page.labels, ks, with_gap))
    return (f'<h2>Ranking metrics</h2><pre>{esc(table)}</pre><p class="muted">As eval.py --labels reports '
            f'them, K from config.yaml (evaluation.k_values){dropped}; {gap}; random = the exact expectation '
            f'of a random ranking. eval.py also reports the untrained_head and knn_density baselines. '
            f'Labels taken from the top of this ranking make these figures look better than they are: '
            f'measure on make sample-for-labels labels.</p>')


def compare_labelled(scored, labels, ks, with_gap=False):
    """ranking.compare of the trained score (and the masked_gap baseline when `with_gap`) against random over
    the scored clips with a 0/1 label."""
    rows = sorted((c for c in scored if c["score"] is not None and labels.get(c["clip_id"]) is not None),
                  key=lambda c: c["clip_id"])
    methods = {"trained": np.array([c["score"] for c in rows], dtype=float)}
    if with_gap:
        methods["masked_gap"] = np.array([c["masked_gap"] for c in rows], dtype=float)
    return ranking.compare({**methods, "random": None},
                           np.array([labels[c["clip_id"]] for c in rows], dtype=int), ks,
                           scenes=[c.get("scene", "") for c in rows], clip_ids=[c["clip_id"] for c in rows])


def misses_block(page):
    """Known positives ranked below the top list: the clips a reviewer should see the model missed."""
    misses = [c for c in page.order if page.is_miss(c["clip_id"])]
    if not misses:
        return '<h2>Missed positives (0)</h2><p class="muted">every known positive is in the top list</p>'
    rows = "".join(f'<tr><td class="r">{page.ranks[c["clip_id"]]}</td><td class="r">{c["score"]:.4f}</td>'
                   f'<td>{clip_ref(page, c["clip_id"])}</td><td>{esc(c["scene"])}</td>'
                   f'<td>{esc(c["camera"])}</td></tr>' for c in misses)
    return (f'<h2>Missed positives ({len(misses)})</h2><p class="muted">Clips labelled 1 that rank below the '
            f'top {len(page.top)}; those in the most-ordinary list are marked &#9888; there.</p>'
            f'<table class="small"><tr><th>rank</th><th>score</th><th>clip</th><th>scene</th><th>camera</th>'
            f'</tr>{rows}</table>')


def clip_ref(page, clip_id):
    """A clip id, linked to its card when the page shows one (the ranking's card, else the pick's)."""
    if clip_id in page.shown:
        return f'<a href="#c{page.ranks[clip_id]}">{esc(clip_id)}</a>'
    if clip_id in page.picks and clip_id in page.by_id:
        return f'<a href="#p{page.picks[clip_id]["rank"]}">{esc(clip_id)}</a>'
    return f'{esc(clip_id)} <span class="muted">(not listed below)</span>'


def folded_list(page, p):
    """A pick's folded near-duplicates in a <details> (no script)."""
    dups = "".join(f'<tr><td>{clip_ref(page, x["clip_id"])}</td><td class="r">{fmt(x.get("score"))}</td>'
                   f'<td class="r">{fmt(x.get("similarity"), 3)}</td><td>{esc(x["reason"])}</td></tr>'
                   for x in p["near_duplicates"])
    return (f'<details><summary>{len(p["near_duplicates"])} folded in</summary><table class="small">'
            f'<tr><th>clip</th><th>score</th><th>similarity</th><th>reason</th></tr>{dups}</table>'
            f'</details>' if dups else ' &middot; <span class="muted">nothing folded in</span>')


def selection_block(page, picks, path):
    """The picks of selection.jsonl, each a full clip card (clip_card) with its folded near-duplicates; a
    pick missing from the scores gets a text line instead."""
    items = []
    for p in picks:
        scored = page.by_id.get(p["clip_id"])
        if scored:
            items.append(clip_card(page, scored, f"p{p['rank']}", folded_list(page, p)))
            continue
        stamps = [p[k] for k in ("first_timestamp", "last_timestamp") if _number(p.get(k))]
        items.append(f'<article class="clip"><div class="info">{pick_box(p, True)} <b>pick #{p["rank"]}</b> '
                     f'{fmt(p["score"])} <b class="cid">{esc(p["clip_id"])}</b><br>{esc(p["scene"])} '
                     f'&middot; {esc(p["camera"])} &middot; '
                     f'{time_span(stamps if len(stamps) == 2 else None)}<br>'
                     f'<span class="muted">not in the scores file: no pictures</span>{folded_list(page, p)}'
                     f'</div></article>')
    return (f'<h2>Selection ({len(picks)} picks)</h2><p class="muted">From {esc(path)}, in pick order, each '
            f'with its stills, preview and bars; picks are pre-checked for export here and in the raw '
            f'ranking below.</p>{"".join(items)}')


def fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}f}"


def scene_table(clips):
    """Per scene: scored and failed clips, mean and max score; the scene with the highest max first."""
    by = {}
    for c in clips:
        by.setdefault(c["scene"], []).append(c["score"])
    stats = [(scene, [s for s in v if s is not None], v.count(None)) for scene, v in by.items()]
    stats.sort(key=lambda t: (-max(t[1], default=-math.inf), t[0]))
    cell = lambda v, f: f"{f(v):.4f}" if v else "-"  # noqa: E731
    body = "".join(f'<tr><td>{esc(s)}</td><td class="r">{len(v)}</td><td class="r">{nf}</td>'
                   f'<td class="r">{cell(v, lambda x: sum(x) / len(x))}</td>'
                   f'<td class="r">{cell(v, max)}</td></tr>' for s, v, nf in stats)
    return ('<table class="small"><tr><th>scene</th><th>clips</th><th>failed</th><th>mean</th><th>max</th>'
            f'</tr>{body}</table>')


def failed_table(failed):
    body = "".join(f'<tr><td>{esc(c["clip_id"])}</td><td>{esc(c["scene"])}</td><td>{esc(c["camera"])}</td>'
                   f'<td>{esc(c["error"])}</td></tr>' for c in failed)
    return ('<table class="small"><tr><th>clip</th><th>scene</th><th>camera</th><th>error</th></tr>'
            f'{body}</table>') if failed else '<p class="muted">none</p>'


def export_bar(page):
    """Export buttons: disabled in the HTML and enabled by the script, so they are inert without scripts."""
    buttons = "".join(f'<button type="button" data-do="{k}" disabled>{t}</button>'
                      for k, t in (("ids", "copy selected clip_ids"), ("csv", "download selected as CSV"),
                                   ("jsonl", "download selected as JSONL")))
    return (f'<div id="export" data-header="{esc(",".join(EXPORT_FIELDS))}"><span id="count">'
            f'{len(page.picks)} pre-checked</span> {buttons}<noscript> (the export buttons need JavaScript; '
            f'everything else works without it)</noscript><textarea id="out" rows="3" readonly hidden '
            f'aria-label="selected clip_ids"></textarea></div>')


# Export from the checked boxes' embedded lines; a clip listed twice (selection and top list) exports once.
SCRIPT = """(()=>{const bar=document.getElementById('export'),out=document.getElementById('out'),
count=document.getElementById('count'),boxes=[...document.querySelectorAll('input.pick')];
const picked=()=>{const seen=new Set();
return boxes.filter(b=>b.checked&&!seen.has(b.dataset.id)&&seen.add(b.dataset.id));};
const lines=(key,end)=>picked().map(b=>b.dataset[key]+end).join('');
const make={ids:()=>lines('id','\\n'),csv:()=>bar.dataset.header+'\\r\\n'+lines('csv','\\r\\n'),
jsonl:()=>lines('json','\\n')};
const show=(note)=>{count.textContent=picked().length+' selected'+(note||'');};
boxes.forEach(b=>b.addEventListener('change',()=>{
boxes.forEach(o=>{if(o.dataset.id===b.dataset.id)o.checked=b.checked;});show();}));
const save=(kind)=>{const a=document.createElement('a');a.download='selected_clips.'+kind;
a.href=URL.createObjectURL(new Blob([make[kind]()],{type:kind==='csv'?'text/csv':'application/x-ndjson'}));
document.body.append(a);a.click();a.remove();};
const copy=()=>{out.hidden=false;out.value=make.ids();out.select();let ok=false;
try{ok=document.execCommand('copy');}catch(e){}show(ok?': clip_ids copied':': press Ctrl+C to copy them');};
bar.querySelectorAll('button').forEach(b=>{b.disabled=false;
b.addEventListener('click',()=>b.dataset.do==='ids'?copy():save(b.dataset.do));});
show();window.jepaExport=make;})();"""  # jepaExport: lets a headless-browser check read the export text

CSS = """body{font:14px system-ui,sans-serif;margin:16px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #eee;vertical-align:middle;
text-align:left}th{background:#f4f4f4}.r{text-align:right;font-variant-numeric:tabular-nums}
.meta td{border:0;padding:1px 8px}.muted{color:#888}pre{background:#f6f6f6;padding:8px;overflow:auto}
#export{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ddd;z-index:5}
#export textarea{display:block;width:100%;margin-top:4px}#export textarea[hidden]{display:none}
article.clip{display:flex;gap:12px;align-items:flex-start;padding:8px 0;border-bottom:1px solid #eee}
article.miss{background:#fff4e6}.info{width:290px;flex:none;overflow-wrap:anywhere;font-size:13px}
.score{font-weight:600;font-variant-numeric:tabular-nums}.badge{font-weight:600;border:2px solid #e8590c;
padding:0 4px}img.pv,div.pv{width:240px;height:135px;object-fit:contain;background:#000;display:block}
.side{flex:1;min-width:0}.strip{white-space:nowrap;overflow-x:auto}
figure.t{display:inline-block;margin:0 3px;text-align:center}figure.t img,.ph{width:96px;height:54px;
object-fit:cover;display:block;border:2px solid transparent}figure.peak img{border:2px dashed #e8590c}
.ph{background:#ccc;color:#666;font-size:11px;line-height:54px;text-align:center}div.pv{line-height:135px}
figcaption{font-size:11px;color:#666}svg text{font-size:11px;fill:#555}
rect.b{fill:#4c6ef5}rect.pk{fill:#e8590c}.pkm{fill:#222}text.pkt{fill:#222;font-weight:600}.ax{stroke:#999}
line.cut{stroke:#e8590c;stroke-dasharray:4 3}text.cut{fill:#e8590c}a{color:#1c5fd4}
.view{display:none}.view:target{display:block;position:fixed;inset:0;background:rgba(0,0,0,.8);
overflow:auto;z-index:10}.box{background:#fff;margin:16px auto;padding:12px 16px;max-width:1600px}
.close{float:right;font-size:16px}.big{display:flex;gap:24px;align-items:flex-end}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px;margin-top:8px}
figure.full{margin:0}figure.full a{display:block;background:#ccc center/contain no-repeat content-box;
border:4px solid transparent}figure.full.peak a{border:4px dashed #e8590c}ol.sel li{margin:4px 0}
details{margin:2px 0 6px 0}.low{color:#a34700}"""


def build_html(clips, args, meta, records, labels=None, picks=()):
    """The whole report page as one string. `records`: {clip_id: manifest record}; `labels`: read_labels()."""
    page = Page(clips, args, meta, records, labels, picks)
    failed = [c for c in clips if c["score"] is None]
    top, bottom, order = page.top, page.bottom, page.order
    cut = (top[-1]["score"], order[args.top]["score"]) if len(order) > args.top else None
    header = [("scores", args.scores), ("checkpoint", meta.get("checkpoint", "unknown")),
              ("encoder", meta.get("encoder", "unknown")),
              ("manifest", meta.get("manifest") or args.manifest or "unknown"),
              ("labels", args.labels or "none"), ("selection", args.selection or "none"),
              ("clips", f"{len(page.scored)} scored, {len(failed)} failed"),
              ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))]
    meta_rows = "".join(f"<tr><td><b>{k}</b></td><td>{esc(v)}</td></tr>" for k, v in header)
    hist = (svg_histogram([c["score"] for c in page.scored], args.top, cut) if page.scored
            else "<p>no scored clips</p>")
    if bottom:
        ordinary = f"<h2>Bottom {len(bottom)}: most ordinary (lowest first)</h2>{clip_list(page, bottom)}"
    else:
        why = "--bottom 0" if not args.bottom else f"all {len(order)} scored clips are in the top list"
        ordinary = f'<h2>Most ordinary clips</h2><p class="muted">none listed: {why}</p>'
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>jepa-clips novelty report'
            f'</title><style>{CSS}{LABEL_CSS}</style></head><body><h1>Most novel clips</h1>'
            f'<table class="meta">{meta_rows}</table>{export_bar(page)}{label_bar()}'
            f'{selection_block(page, picks, args.selection) if picks else ""}'
            f'{metrics_block(page) if labels is not None else ""}<h2>Score distribution</h2>{hist}'
            f'<h2>Top {len(top)}: most novel (highest score first{", the raw ranking" if picks else ""})</h2>'
            f'<p class="muted">Preview: every frame (up to {args.preview_frames}), the peak tubelet\'s '
            f'frames marked PEAK and orange on the timeline; click it for the full-size frames. Bars: '
            f'novelty (1 &minus; cosine) of each tubelet on one scale for the whole page, the peak orange '
            f'with &#9660;; its first frame is the dashed still.</p>{clip_list(page, top)}{ordinary}'
            f'{misses_block(page) if labels is not None else ""}<h2>Per scene</h2>{scene_table(clips)}'
            f'<h2>Failed clips ({len(failed)})</h2>{failed_table(failed)}'
            f'<script>{SCRIPT}{LABEL_SCRIPT}</script>'
            f'</body></html>\n')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="scores JSONL written by infer.py (required)")
    cli.add_clip_inputs(p, "previews, stills across each clip and timestamps (default: none; each clip shows "
                           "only its first frame)", "label per clip, missed positives and ranking metrics")
    p.add_argument("--selection", help="selection.jsonl from make select: picks listed with their folded "
                                       "near-duplicates and pre-checked for export (default: none)")
    top = cli.load_config()["selection"]["top"]  # one default for top, shared with make select
    p.add_argument("--top", type=int, default=top,
                   help=f"how many of the highest-scoring clips to show (default: {top})")
    p.add_argument("--bottom", type=int, default=10,
                   help="how many of the lowest-scoring clips to show, never repeating the top (default: 10)")
    p.add_argument("--thumbs", type=int, default=4,
                   help="evenly spaced stills per clip; the peak frame is added (default: 4)")
    p.add_argument("--preview-frames", type=int, default=16,
                   help="most frames in each animated preview, evenly spaced, the peak tubelet's always in; "
                        "0 = no previews (default: 16)")
    p.add_argument("--probe", help="probe.jsonl from make learn: p_interesting beside each card's score")
    p.add_argument("--output", default="report.html", help="HTML file to write (default: report.html)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cli.check_output(args.output, {"--scores": args.scores, "--manifest": args.manifest,
                                    "--labels": args.labels, "--selection": args.selection})
    if args.top < 1 or args.bottom < 0 or args.thumbs < 1 or args.preview_frames < 0:
        raise cli.UserError("--top and --thumbs must be >= 1, --bottom and --preview-frames >= 0")
    if args.data_root and not args.manifest:
        raise cli.UserError("--data-root only applies with --manifest")
    clips = read_scores(args.scores)
    meta = read_meta(args.scores)
    named = meta.get("manifest") if isinstance(meta.get("manifest"), str) else None
    if not args.manifest and named:  # the manifest infer.py scored: previews without MANIFEST=
        if Path(named).is_file():
            args.manifest = named
            print(f"using the manifest the scores came from ({named}, named in the scores' meta.json)")
        else:
            print(f"note: the scores' meta.json names the manifest {named}, which is not there: only first "
                  f"frames shown; pass --manifest (make report MANIFEST=...) for previews")
    labels = read_labels(args.labels) if args.labels else None
    picks = read_selection(args.selection) if args.selection else []
    # tubelet_size=1: a clip too short to score is already a failed row; it must not stop the report
    records = read_manifest(args.manifest, args.data_root, 1) if args.manifest else []
    if args.probe:
        from learn import read_probabilities
        Page.probe = {c: v[0] for c, v in read_probabilities(args.probe).items()}
    text = build_html(clips, args, meta, {r["clip_id"]: r for r in records}, labels, picks)
    cli.atomic_write_text(args.output, text)
    print(f"wrote {args.output} ({len(text.encode()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    cli.run_cli(main)
