"""One self-contained HTML page for reviewing the clips infer.py scored as most novel, plus the ranking
metrics eval.py reports when it has labels.

Usage:
  python report.py --scores experiments/RUN/scores.jsonl --output report.html
  python report.py --scores S --manifest clips.jsonl [--data-root R] [--top 50] [--bottom 10] --output report.html

The page has no scripts, no server and no network references: thumbnails are inlined as small JPEG data
URIs and charts are inline SVG, so it opens from disk in any browser and can be mailed. Links to the frames
are file:// URIs (they work on the machine that holds the frames). Without --manifest, each clip shows only
its first frame; with it, a strip of frames across the clip with the most surprising tubelet outlined.
"""
import argparse
import base64
import datetime
import html
import io
import json
import math
from pathlib import Path

from PIL import Image

import jepa
from eval import rank_order
from manifest import read_jsonl, read_manifest

THUMB_SIZE = (160, 120)  # box a thumbnail fits in: ~4 KB as JPEG, so TOP=50 stays around 1-2 MB
THUMB_QUALITY = 70


# ---- reading inputs ----

def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_scores(path):
    """infer.py's scores JSONL -> list of clip dicts in file order. A NaN/inf score is kept as a failed clip."""
    rows = read_jsonl(path, "scores file", " (write one with infer.py --output)")
    clips = []
    for where, obj in rows:
        score, tubs = obj.get("score"), obj.get("tubelet_scores", [])
        if (score is not None and not _number(score)) or not isinstance(tubs, list) or not all(map(_number, tubs)) \
                or not isinstance(obj.get("first_frame") or "", str):
            raise jepa.UserError(f"{where}: score must be a number or null, tubelet_scores a list of numbers "
                                 f"and first_frame a path")
        clip = {"scene": "unknown", "camera": "unknown", "first_frame": None, **obj, "tubelet_scores": tubs}
        if score is not None and not math.isfinite(score):
            clip.update(score=None, error=obj.get("error") or f"score is {score}")
        elif score is None:
            clip.setdefault("error", "no score (reason not recorded)")
        clips.append(clip)
    return clips


def read_meta(scores_path):
    """The sidecar infer.py writes beside the scores (scores.jsonl.meta.json or scores.meta.json), or {}."""
    p = Path(scores_path)
    for meta in (Path(f"{p}.meta.json"), p.with_suffix(".meta.json")):
        try:
            data = json.loads(meta.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            continue  # a missing or broken sidecar only costs the header its details
    return {}


# ---- HTML pieces ----

def esc(text):
    return html.escape(str(text), quote=True)


def thumbnail(path):
    """A small JPEG data URI of an image file, or None when it is missing or unreadable."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", THUMB_SIZE)  # JPEG: decode at a reduced scale, much faster for large frames
            im = im.convert("RGB")
            im.thumbnail(THUMB_SIZE)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=THUMB_QUALITY)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def frame_strip(frames, tubelet_scores, count, tubelet_size=None):
    """HTML strip of `count` evenly spaced frames plus the first frame of the peak tubelet (outlined).

    Without a known tubelet size it is estimated as frames // tubelets (infer.py drops only a remainder)."""
    n = len(frames)
    tubelet_size = tubelet_size or max(n // max(len(tubelet_scores), 1), 1)
    picks = {round(j * (n - 1) / (count - 1)) for j in range(count)} if count > 1 and n > 1 else {0}
    peak = None
    if tubelet_scores and n > 1:
        peak = min(max(range(len(tubelet_scores)), key=tubelet_scores.__getitem__) * tubelet_size, n - 1)
        picks.add(peak)
    cells = []
    for i in sorted(picks):
        uri, cls = thumbnail(frames[i]), " peak" if i == peak else ""
        img = f'<img src="{uri}" alt="frame {i}">' if uri else '<div class="ph">no image</div>'
        cells.append(f'<figure class="t{cls}"><a href="{esc(file_uri(frames[i]))}">{img}</a>'
                     f'<figcaption>f{i}{" peak" if cls else ""}</figcaption></figure>')
    return "".join(cells)


def file_uri(path):
    return Path(path).absolute().as_uri()


def svg_bars(values, vmax, width=200, height=50):
    """Per-tubelet scores as a small bar chart on the report-wide scale `vmax`; the peak bar is orange."""
    if not values:
        return '<span class="muted">no tubelet scores</span>'
    bw, peak = width / len(values), max(range(len(values)), key=values.__getitem__)
    bars = []
    for i, v in enumerate(values):
        h = max(v, 0) / vmax * (height - 2) if vmax > 0 else 0
        bars.append(f'<rect x="{i * bw + 1:.1f}" y="{height - h:.1f}" width="{max(bw - 2, 1):.1f}" '
                    f'height="{h:.1f}" class="{"pk" if i == peak else "b"}"><title>tubelet {i}: {v:.4f}</title>'
                    f'</rect>')
    return (f'<svg width="{width}" height="{height + 14}" role="img" aria-label="tubelet scores">{"".join(bars)}'
            f'<line x1="0" x2="{width}" y1="{height}" y2="{height}" class="ax"/>'
            f'<text x="0" y="{height + 12}">t0</text><text x="{width}" y="{height + 12}" text-anchor="end">'
            f't{len(values) - 1}</text></svg>')


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
                     f'<text x="{at + (4 if east else -4):.1f}" y="14" text-anchor="{"start" if east else "end"}" '
                     f'class="cut">top {top}: score &#8805; {cut[0]:.4f}</text>')
    return (f'<svg width="{left + width + 10}" height="{base + 22}" role="img" aria-label="score histogram">'
            f'{"".join(parts)}</svg>')


def clip_frames(clip, manifest_frames):
    """A clip's frame paths: from the manifest when it has the clip, else the scores file's first_frame."""
    return manifest_frames.get(clip["clip_id"]) or ([clip["first_frame"]] if clip.get("first_frame") else [])


def clip_rows(clips, ranks, manifest_frames, args, tubelet_size, vmax):
    """Table of clips: rank, score, ids, a linked thumbnail strip and the per-tubelet bar chart."""
    rows = []
    for c in clips:
        frames = clip_frames(c, manifest_frames)
        folder = f'<a href="{esc(file_uri(Path(frames[0]).parent))}">frames folder</a>' if frames else ""
        strip = (frame_strip(frames, c["tubelet_scores"], args.thumbs, tubelet_size)
                 if frames else '<div class="ph">no frame path</div>')
        rows.append(f'<tr><td class="r">{ranks[c["clip_id"]]}</td><td class="r">{c["score"]:.4f}</td>'
                    f'<td class="id"><b>{esc(c["clip_id"]).replace("__", "__<wbr>")}</b><br>'  # wbr: wrap at __
                    f'{esc(c["scene"])} &middot; {esc(c["camera"])}<br>{folder}</td><td class="strip">{strip}</td>'
                    f'<td>{svg_bars(c["tubelet_scores"], vmax)}</td></tr>')
    head = "<tr><th>rank</th><th>score</th><th>clip</th><th>frames</th><th>novelty per tubelet</th></tr>"
    return f'<table class="clips">{head}{"".join(rows)}</table>'


def scene_table(clips):
    """Per scene: scored and failed clips, mean and max score; the scene with the highest max first."""
    by = {}
    for c in clips:
        by.setdefault(c["scene"], []).append(c["score"])
    stats = [(scene, [s for s in v if s is not None], v.count(None)) for scene, v in by.items()]
    stats.sort(key=lambda t: (-max(t[1], default=-math.inf), t[0]))
    cell = lambda v, f: f"{f(v):.4f}" if v else "-"  # noqa: E731
    body = "".join(f'<tr><td>{esc(s)}</td><td class="r">{len(v)}</td><td class="r">{nf}</td>'
                   f'<td class="r">{cell(v, lambda x: sum(x) / len(x))}</td><td class="r">{cell(v, max)}</td></tr>'
                   for s, v, nf in stats)
    return ('<table class="small"><tr><th>scene</th><th>clips</th><th>failed</th><th>mean</th><th>max</th></tr>'
            f'{body}</table>')


def failed_table(failed):
    body = "".join(f'<tr><td>{esc(c["clip_id"])}</td><td>{esc(c["scene"])}</td><td>{esc(c["camera"])}</td>'
                   f'<td>{esc(c["error"])}</td></tr>' for c in failed)
    return ('<table class="small"><tr><th>clip</th><th>scene</th><th>camera</th><th>error</th></tr>'
            f'{body}</table>') if failed else '<p class="muted">none</p>'


CSS = """body{font:14px system-ui,sans-serif;margin:16px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:4px 8px;border-bottom:1px solid #eee;vertical-align:middle;
text-align:left}th{background:#f4f4f4}.r{text-align:right;font-variant-numeric:tabular-nums}
.meta td{border:0;padding:1px 8px}.muted{color:#888}.strip{white-space:nowrap}
figure.t{display:inline-block;margin:0 3px;text-align:center}figure.t img,.ph{width:96px;height:54px;
object-fit:cover;display:block;border:2px solid transparent}figure.peak img{border-color:#e8590c}
.ph{background:#ccc;color:#666;font-size:11px;line-height:54px;text-align:center}
figcaption{font-size:11px;color:#666}td.id{min-width:200px;overflow-wrap:anywhere}svg text{font-size:11px;fill:#555}
rect.b{fill:#4c6ef5}rect.pk{fill:#e8590c}.ax{stroke:#999}line.cut{stroke:#e8590c;stroke-dasharray:4 3}
text.cut{fill:#e8590c}a{color:#1c5fd4}"""


def build_html(clips, args, meta, manifest_frames):
    """The whole report page as one string."""
    scored = [c for c in clips if c["score"] is not None]
    failed = [c for c in clips if c["score"] is None]
    by_id = {c["clip_id"]: c for c in scored}
    order = [by_id[c] for c in rank_order({c["clip_id"]: c["score"] for c in scored})]
    tubelet_size = meta.get("tubelet_size") if isinstance(meta.get("tubelet_size"), int) else None  # else estimated
    ranks = {c["clip_id"]: i for i, c in enumerate(order, 1)}
    top = order[:args.top]
    bottom = order[max(len(order) - args.bottom, len(top)):][::-1]  # lowest first, never repeating the top
    shown = [v for c in top + bottom for v in c["tubelet_scores"]]
    vmax = max(shown, default=0)
    cut = (top[-1]["score"], order[args.top]["score"]) if len(order) > args.top else None
    header = [("scores", args.scores), ("checkpoint", meta.get("checkpoint", "unknown")),
              ("encoder", meta.get("encoder", "unknown")),
              ("manifest", meta.get("manifest") or args.manifest or "unknown"),
              ("clips", f"{len(scored)} scored, {len(failed)} failed"),
              ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))]
    meta_rows = "".join(f"<tr><td><b>{k}</b></td><td>{esc(v)}</td></tr>" for k, v in header)
    hist = svg_histogram([c["score"] for c in scored], args.top, cut) if scored else "<p>no scored clips</p>"
    rest = (clip_rows(bottom, ranks, manifest_frames, args, tubelet_size, vmax) if bottom
            else '<p class="muted">every scored clip is already in the top section</p>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>jepa-clips novelty report</title>'
            f'<style>{CSS}</style></head><body><h1>Most novel clips</h1><table class="meta">{meta_rows}</table>'
            f'<h2>Score distribution</h2>{hist}'
            f'<h2>Top {len(top)} (highest novelty score first)</h2>'
            f'<p class="muted">Bars: novelty (1 &minus; cosine) of each tubelet, on one scale for the whole '
            f'page; orange = the clip\'s most surprising tubelet, whose first frame is outlined.</p>'
            f'{clip_rows(top, ranks, manifest_frames, args, tubelet_size, vmax) if top else ""}'
            f'<h2>Bottom {len(bottom)} (most ordinary, lowest first)</h2>{rest}'
            f'<h2>Per scene</h2>{scene_table(clips)}<h2>Failed clips ({len(failed)})</h2>{failed_table(failed)}'
            f'</body></html>\n')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="scores JSONL written by infer.py")
    p.add_argument("--manifest", help="manifest JSONL of the scored clips: thumbnails across each clip "
                                      "(without it, only each clip's first frame)")
    p.add_argument("--data-root", help="folder that relative frame paths in --manifest resolve against "
                                       "(default: the manifest's folder)")
    p.add_argument("--top", type=int, default=50, help="how many of the highest-scoring clips to show")
    p.add_argument("--bottom", type=int, default=10, help="how many of the lowest-scoring clips to show")
    p.add_argument("--thumbs", type=int, default=4, help="evenly spaced frames per clip (the peak frame is added)")
    p.add_argument("--output", default="report.html", help="HTML file to write")
    args = p.parse_args()
    if args.top < 1 or args.bottom < 0 or args.thumbs < 1:
        raise jepa.UserError("--top and --thumbs must be >= 1 and --bottom >= 0")
    if args.data_root and not args.manifest:
        raise jepa.UserError("--data-root only applies with --manifest")
    clips = read_scores(args.scores)
    meta = read_meta(args.scores)
    # tubelet_size=1: a clip too short to score is already a failed row; it must not stop the report
    records = read_manifest(args.manifest, args.data_root, 1) if args.manifest else []
    text = build_html(clips, args, meta, {r["clip_id"]: r["frames"] for r in records})
    try:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise jepa.UserError(f"cannot create the folder of {args.output}: {e.strerror or e}")
    jepa.atomic_write_text(args.output, text)
    print(f"wrote {args.output} ({len(text.encode()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    jepa.run_cli(main)
