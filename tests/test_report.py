"""Ranking metrics against hand-computed values, and report.py's self-contained HTML review page."""
import base64
import csv
import html
import io
import itertools
import json
import math
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import cli
from manifest import read_manifest
import eval as evaluation
import ranking
import report
from conftest import REALDATA, run_script, write_jsonl

L2 = math.log2


# ---- ranking metrics ----

def test_metrics_hand_computed():
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}
    labels = {"a": 1, "b": 0, "c": 1, "d": 0, "e": 0}  # ranking a b c d e -> relevance 1 0 1 0 0
    m = evaluation.ranking_metrics(scores, labels, [1, 3, 10])
    assert m["average_precision"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["precision_at_k"] == pytest.approx({"1": 1.0, "3": 2 / 3, "10": 2 / 5})  # K > n: divides by n
    assert m["recall_at_k"] == pytest.approx({"1": 0.5, "3": 1.0, "10": 1.0})
    ideal3 = 1 / L2(2) + 1 / L2(3)
    assert m["ndcg_at_k"]["1"] == pytest.approx(1.0)
    assert m["ndcg_at_k"]["3"] == pytest.approx((1 / L2(2) + 1 / L2(4)) / ideal3)
    assert (m["num_labelled"], m["num_positive"]) == (5, 2)


def test_metrics_ties_and_null_labels():
    # u (top score) is unlabelled, x has no score, z was never scored: none of them count, u is not a negative
    scores = {"b": 0.5, "a": 0.5, "c": 0.9, "u": 0.95, "x": None}
    labels = {"b": 1, "a": 0, "c": 0, "u": None, "x": 1, "z": 1}
    m = evaluation.ranking_metrics(scores, labels, [1, 2])
    # labelled ranking: c, then the tie a/b broken by clip_id -> a, b; relevance 0 0 1
    assert (m["num_labelled"], m["num_positive"]) == (3, 1)
    assert m["average_precision"] == pytest.approx(1 / 3)
    assert m["precision_at_k"] == pytest.approx({"1": 0.0, "2": 0.0})
    assert m["recall_at_k"] == pytest.approx({"1": 0.0, "2": 0.0})
    assert m["ndcg_at_k"] == pytest.approx({"1": 0.0, "2": 0.0})
    reordered = dict(reversed(list(scores.items())))  # insertion order must not break the tie
    assert evaluation.ranking_metrics(reordered, labels, [1, 2]) == m
    m3 = evaluation.ranking_metrics(scores, labels, [3])
    assert m3["ndcg_at_k"]["3"] == pytest.approx(1 / L2(4))


def test_metrics_without_positives_are_none_not_nan():
    m = evaluation.ranking_metrics({"a": 1.0, "b": 0.5}, {"a": 0, "b": 0}, [1])
    assert m["average_precision"] is None and m["recall_at_k"]["1"] is None and m["ndcg_at_k"]["1"] is None
    assert m["precision_at_k"]["1"] == 0.0
    empty = evaluation.ranking_metrics({"a": 1.0}, {"a": None}, [1])
    assert empty["num_labelled"] == 0 and empty["precision_at_k"]["1"] is None
    json.dumps(m, allow_nan=False)  # eval.json stays strict JSON


def test_random_baseline_is_the_mean_over_all_rankings():
    labels = {"a": 1, "b": 0, "c": 1, "d": 0, "e": 0, "n": None}
    ks = [1, 2, 3, 10]
    runs = []
    for perm in itertools.permutations("abcde"):
        runs.append(evaluation.ranking_metrics({c: -i for i, c in enumerate(perm)}, labels, ks))
    base = evaluation.random_baseline(labels, ks)
    assert base["average_precision"] == pytest.approx(sum(r["average_precision"] for r in runs) / len(runs))
    for key in ("precision_at_k", "recall_at_k", "ndcg_at_k"):
        for k in map(str, ks):
            assert base[key][k] == pytest.approx(sum(r[key][k] for r in runs) / len(runs)), (key, k)
    assert base["precision_at_k"]["3"] == pytest.approx(2 / 5)  # the positive rate
    assert base["recall_at_k"]["2"] == pytest.approx(2 / 5)  # min(K, n) / n
    assert (base["num_labelled"], base["num_positive"]) == (5, 2)


def test_random_baseline_hand_values_and_scored_subset():
    labels = {"a": 1, "b": 1, "c": 0, "d": 0, "late": 1}
    # exact E[AP] for n=4, 2 positives: (H_4 + (4 - H_4) / 3) / 4 = 98/144
    scored = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "late": None}  # "late" failed: the caller leaves it out
    base = evaluation.random_baseline({c: labels[c] for c, s in scored.items() if s is not None}, [2])
    assert base["average_precision"] == pytest.approx(98 / 144)
    assert base["ndcg_at_k"]["2"] == pytest.approx(0.5)  # rate * ideal / ideal
    assert base["num_labelled"] == 4
    counted = evaluation.random_baseline({"a": 1, "b": 0}, [1])
    assert counted["average_precision"] == pytest.approx(0.75) and counted["precision_at_k"]["1"] == 0.5
    none = evaluation.random_baseline({"a": 0}, [1])
    assert none["average_precision"] is None and none["ndcg_at_k"]["1"] is None


def test_ranking_table():
    trained = evaluation.ranking_metrics({"a": 0.9, "b": 0.1}, {"a": 1, "b": 0}, [1, 50])
    none = evaluation.ranking_metrics({"a": 0.9}, {"a": 0}, [1, 50])
    text = evaluation.ranking_table({"trained": trained, "masked_gap": none, "random": trained}, [1, 50])
    lines = text.splitlines()
    assert lines[0].split() == ["method", "AP", "P@1", "R@1", "NDCG@1", "P@50", "R@50", "NDCG@50"]
    assert lines[1].split()[:3] == ["trained", "1.000", "1.000"]
    assert lines[2].split()[1] == "-"
    assert len({len(line) for line in lines[:4]}) == 1  # fixed width


def test_read_labels(tmp_path):
    good = write_jsonl(tmp_path / "labels.jsonl", [{"clip_id": "a", "binary_label": 1},
                                                   {"clip_id": "b", "binary_label": None}])
    assert evaluation.read_labels(good) == {"a": 1, "b": None}
    bad = tmp_path / "bad.jsonl"
    for body, expect in [('{"clip_id": "a", "binary_label": 1}\n{oops\n', "bad.jsonl:2: not JSON"),
                         ('{"clip_id": "a", "binary_label": 2}\n', "bad.jsonl:1: binary_label must be 0, 1"),
                         ('{"clip_id": "a", "binary_label": true}\n', "bad.jsonl:1: binary_label"),
                         ('{"clip_id": "a"}\n', "bad.jsonl:1: binary_label"),
                         ('[1]\n', "bad.jsonl:1: expected a JSON object")]:
        bad.write_text(body)
        with pytest.raises(cli.UserError, match=re.escape(expect)):
            evaluation.read_labels(bad)
    with pytest.raises(cli.UserError, match="labels file not found"):
        evaluation.read_labels(tmp_path / "missing.jsonl")


def test_duplicate_clip_ids_are_refused(tmp_path):
    dup = write_jsonl(tmp_path / "labels.jsonl", [{"clip_id": "a", "binary_label": 1},
                                                  {"clip_id": "a", "binary_label": 0}])
    with pytest.raises(cli.UserError, match=re.escape(f"{dup}:2: duplicate clip_id 'a' (first on line 1)")):
        evaluation.read_labels(dup)


# ---- the HTML review page ----

EVIL = "<script>alert(1)</script>"
HOSTILE = "evil\"'><img src=x onerror=alert(1)>"  # breaks out of a quoted attribute if not escaped
VOID = {"br", "img", "input", "meta", "wbr", "hr", "link"}


@pytest.fixture
def scored(demo_data, tmp_path):
    """Scores for the 15 demo clips: one failed, one tie, one scene named like a script tag."""
    records = read_manifest(demo_data)
    rows = []
    for i, r in enumerate(records):
        tubs = [round(0.01 * ((i * 7 + t * 3) % 11), 6) for t in range(4)]
        row = {"clip_id": r["clip_id"], "scene": EVIL if i == 4 else r["scene"], "camera": r["camera"],
               "first_frame": r["frames"][0], "score": round(0.01 * i, 6), "tubelet_scores": tubs}
        if i == 7:
            row.update(score=None, tubelet_scores=[], error="cannot read a frame <bad>")
        if i in (9, 14):
            row["score"] = rows[i - 1]["score"]  # ties, broken by clip_id (the file is in reverse order)
        rows.append(row)
    return write_jsonl(tmp_path / "scores.jsonl", rows[::-1]), rows


@pytest.fixture
def review(scored, demo_data, tmp_path):
    """`scored` plus a manifest (clip 1 renamed HOSTILE, its first frame a file with a hostile name), labels
    and a selection. Ranks: clip 13 is #1, clip 6 #8, clip 1 #13 of 14; with --top 5 --bottom 3 the bottom
    list is clips 0, 1, 2. Positives: 13 (found), 6 and 1 (missed); 2 unlabelled; 7 failed."""
    scores, rows = scored
    records = read_manifest(demo_data)
    hostile_frame = tmp_path / f"{HOSTILE}.jpg"
    hostile_frame.write_bytes(Path(records[1]["frames"][0]).read_bytes())
    records[1].update(clip_id=HOSTILE, frames=[str(hostile_frame)] + records[1]["frames"][1:])
    rows[1].update(clip_id=HOSTILE, camera=HOSTILE, first_frame=str(hostile_frame))
    write_jsonl(scores, rows[::-1])
    manifest = write_jsonl(tmp_path / "manifest.jsonl", [
        {"clip_id": r["clip_id"], "scene_id": r["scene"], "camera": r["camera"], "frame_paths": r["frames"],
         "timestamps": r["timestamps"]} for r in records])
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"clip_id": r["clip_id"], "binary_label": None if i == 2 else int(i in (13, 6, 1, 7))}
        for i, r in enumerate(rows)])
    dups = [{"clip_id": rows[14]["clip_id"], "score": 0.13, "similarity": 0.97, "reason": "near_duplicate"},
            {"clip_id": "dup" + HOSTILE, "score": None, "similarity": None, "reason": "scene_quota"}]
    selection = write_jsonl(tmp_path / "selection.jsonl", [
        {"rank": 1, "clip_id": rows[13]["clip_id"], "scene": "scene_4", "camera": "CAM_FRONT", "score": 0.13,
         "first_frame": None, "last_frame": None, "first_timestamp": None, "last_timestamp": None,
         "near_duplicates": dups},
        {"rank": 2, "clip_id": HOSTILE, "score": 0.01, "near_duplicates": []},
        {"rank": 3, "clip_id": "ghost" + HOSTILE, "scene": EVIL, "camera": "cam", "score": 0.5,
         "first_frame": "/g/a.jpg", "last_frame": "/g/b.jpg", "first_timestamp": 5, "last_timestamp": 9,
         "near_duplicates": []}])
    args = ["--scores", scores, "--manifest", manifest, "--labels", labels, "--selection", selection,
            "--top", 5, "--bottom", 3, "--output", tmp_path / "out" / "report.html"]
    return args, rows, records


def build(monkeypatch, args):
    assert run_report(monkeypatch, *args) == 0
    return Path(args[args.index("--output") + 1]).read_text()


def expected_order(rows):
    return [r["clip_id"] for r in sorted((r for r in rows if r["score"] is not None),
                                         key=lambda r: (-r["score"], r["clip_id"]))]


def section(page, title):
    """The HTML between the <h2> starting with `title` and the next <h2>."""
    return page.split(f"<h2>{title}")[1].split("<h2>")[0]


def clip_ids(html_part):
    return [html.unescape(m.replace("<wbr>", "")) for m in re.findall(r'<b class="cid">(.*?)</b>', html_part)]


def run_report(monkeypatch, *args):
    """report.py's CLI in this process, through cli.run_cli as `python report.py` runs it (but without a
    second torch import); returns the exit status."""
    monkeypatch.setattr(sys, "argv", ["report.py", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.run_cli(report.main)
    return e.value.code


class Parsed(HTMLParser):
    """Start tags with their (unescaped) attributes, script texts, and the tags left unbalanced."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.tags, self.scripts, self.open, self.errors, self._in_script = [], [], [], [], False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.open[-1] if self.open else None}>")
        else:
            self.open.pop()
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def all(self, tag, **having):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in having.items())]


def webp_frames(uri):
    """The frames of an animated WebP data URI, with their durations."""
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "WEBP"
    frames = []
    for i in range(im.n_frames):
        im.seek(i)
        frames.append((im.convert("RGB"), im.info["duration"]))
    return frames


def test_report_is_self_contained_and_ordered(scored, demo_data, tmp_path):
    scores, rows = scored
    out = tmp_path / "out" / "report.html"
    run_script("report.py", "--scores", scores, "--manifest", demo_data, "--top", 5, "--bottom", 3,
               "--output", out, check=True)
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "file://" not in page
    assert page.count("<script") == 1 and "<iframe" not in page
    assert "<link" not in page and "@import" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith(("data:image/jpeg;base64,", "data:image/webp;base64,")) for s in srcs)
    Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).verify()
    order = expected_order(rows)
    assert clip_ids(section(page, "Top")) == order[:5]
    assert clip_ids(section(page, "Bottom 3")) == order[::-1][:3]  # lowest first
    failed = rows[7]["clip_id"]
    assert failed not in section(page, "Top") + section(page, "Bottom")
    assert failed in section(page, "Failed") and "cannot read a frame &lt;bad&gt;" in page
    assert "14 scored, 1 failed" in page
    assert "top 5: score" in section(page, "Score distribution")
    # frame links are relative to the report, so the page and the frames folder move together
    frame = read_manifest(demo_data)[13]["frames"][0]
    assert f'href="{os.path.relpath(frame, out.parent)}"' in page
    assert len(re.findall(r'<figure class="t', section(page, "Top"))) >= 5 * 4  # a strip across each clip


def test_report_tie_order_and_large_top(scored, tmp_path, monkeypatch):
    scores, rows = scored
    page = build(monkeypatch, ["--scores", scores, "--output", tmp_path / "r.html"])  # top 50 > 14 clips
    assert clip_ids(section(page, "Top")) == expected_order(rows)
    assert "Bottom" not in page  # no "Bottom 0" heading
    assert "all 14 scored clips are in the top list" in section(page, "Most ordinary clips")
    assert "checkpoint</b></td><td>unknown" in page
    # without --manifest: one still (the first frame) per clip, no preview, no made-up timestamps
    assert len(re.findall(r'<figure class="t', page)) == 14 and "image/webp" not in page
    assert "no timestamps" in page


def test_report_placeholders_and_meta(scored, tmp_path, monkeypatch):
    scores, rows = scored
    (tmp_path / "empty.jpg").write_bytes(b"")
    rows[0]["first_frame"] = str(tmp_path / "missing.jpg")
    rows[1]["first_frame"] = str(tmp_path / "empty.jpg")
    rows[2].pop("first_frame")
    write_jsonl(scores, rows)
    meta = {"checkpoint": "run/best.pt", "encoder": "enc<x>"}
    (tmp_path / "scores.jsonl.meta.json").write_text(json.dumps(meta))
    page = build(monkeypatch, ["--scores", scores, "--output", tmp_path / "r.html"])
    assert page.count('<div class="ph">') == 3
    assert "run/best.pt" in page and "enc&lt;x&gt;" in page


def test_thumbnails_stay_small(tmp_path, demo_data):
    frames = sorted(REALDATA.glob("frames/*/*.jpg"))[:3] if REALDATA.is_dir() else []
    frames = frames or read_manifest(demo_data)[0]["frames"][:3]
    for f in frames:
        uri = report.thumbnail(f)
        assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 15_000  # 60 clips x 5 stay < 4 MB


def test_cli_errors_name_file_and_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.jsonl"
    assert run_report(monkeypatch, "--scores", missing, "--output", tmp_path / "r.html") == 2
    assert f"error: {missing}: scores file not found" in capsys.readouterr().err
    bad = tmp_path / "scores.jsonl"
    bad.write_text('{"clip_id": "a", "score": 0.1, "tubelet_scores": [0.1]}\nnot json\n')
    assert run_report(monkeypatch, "--scores", bad, "--output", tmp_path / "r.html") == 2
    assert f"error: {bad}:2: not JSON" in capsys.readouterr().err
    bad.write_text('{"clip_id": "a", "score": "high"}\n')
    assert run_report(monkeypatch, "--scores", bad, "--output", tmp_path / "r.html") == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: score must be a number or null" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_help_shows_every_default(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["report.py", "--help"])
    with pytest.raises(SystemExit):
        report.main()
    text = " ".join(capsys.readouterr().out.split())
    for default in (50, 10, 4, 16, "report.html"):
        assert f"(default: {default})" in text
    assert "ranking metrics" in text and "--labels" in text


def test_previews_animate_every_frame_and_mark_the_peak(review, monkeypatch):
    args, rows, records = review
    p = Parsed(build(monkeypatch, args))
    previews = p.all("img", **{"class": "pv"})
    assert len(previews) == 2 + 5 + 3  # the two scored picks first, then every listed clip
    frames = webp_frames(previews[0]["src"])  # #1 is clip 13: 8 frames, tubelets of 2, 100 ms apart
    assert len(frames) == 8 and all(ms == 100 for _, ms in frames)
    peak = max(range(4), key=rows[13]["tubelet_scores"].__getitem__)
    orange = [i for i, (im, _) in enumerate(frames) if _near(im.getpixel((40, 15)), report.PEAK_RGB)]
    assert orange == [2 * peak, 2 * peak + 1]  # the PEAK label is on the peak tubelet's frames only
    # a shorter preview: 3 evenly spaced frames plus the peak tubelet's two
    page = build(monkeypatch, args + ["--preview-frames", 3])
    uri = Parsed(page).all("img", **{"class": "pv"})[0]["src"]
    assert len(webp_frames(uri)) == len({0, 4, 7, 2 * peak, 2 * peak + 1})


def _near(rgb, target, tol=60):  # lossy WebP: colours come back approximately
    return all(abs(a - b) <= tol for a, b in zip(rgb, target))


def test_clip_context_in_words(review, monkeypatch):
    args, rows, records = review
    page = build(monkeypatch, args)
    card = page.split('id="c1">')[1].split("</article>")[0]  # rank 1: clip 13 = scene_4, clip 1
    peak = max(range(4), key=rows[13]["tubelet_scores"].__getitem__)
    assert "0.80 s &rarr; 1.50 s (0.70 s long)" in card
    assert "percentile 92: above 12 of the other 13 scored clips" in card  # clip 14 ties it, not below
    assert (f"peak: tubelet t{peak} of 4 (frames f{2 * peak}&ndash;f{2 * peak + 1}, "
            f"{0.2 * peak:.2f}&ndash;{0.2 * peak + 0.1:.2f} s into the clip)") in card
    assert f"peak t{peak}</text>" in card and "&#9650; peak" in card  # shape and words, not colour alone
    assert '<a class="pvl" href="#v1">' in card and '<div class="view" id="v1">' in card
    assert card.count('<figure class="full') == 8 and card.count('<figure class="full peak"') == 2
    assert report.clock(1532402927612460) == "2018-07-24 03:28:47.612 UTC"  # nuScenes µs are dates


def test_labels_misses_and_metrics(review, monkeypatch):
    args, rows, records = review
    page = build(monkeypatch, args)
    assert "label: 1 (positive)" in page.split('id="c1">')[1].split("</article>")[0]
    assert "label: null (unlabelled)" in page.split('id="c12">')[1].split("</article>")[0]  # clip 2
    bottom = section(page, "Bottom 3")
    assert clip_ids(bottom) == [rows[0]["clip_id"], HOSTILE, rows[2]["clip_id"]]
    assert re.findall(r'<article class="clip miss" id="(c\d+)"', page) == ["c13"]  # clip 1, bottom list
    assert "&#9888; missed positive" in page.split('id="c13">')[1].split("</article>")[0]
    misses = section(page, "Missed positives (2)")
    assert re.findall(r'<td class="r">(\d+)</td>', misses) == ["8", "13"]
    assert f'href="#c13">{html.escape(HOSTILE)}</a>' in misses and "(not listed below)" in misses
    # the metrics block is eval's table: trained AP by hand, positives at labelled ranks 1, 8, 12 of 13
    metrics = html.unescape(section(page, "Ranking metrics").split("<pre>")[1].split("</pre>")[0])
    trained = metrics.splitlines()[1].split()
    assert trained[:2] == ["trained", "0.500"] and metrics.splitlines()[2].startswith("random")
    labels, ks = evaluation.read_labels(args[args.index("--labels") + 1]), [10]  # 13 labelled: no @50/@100
    expect = report.compare_labelled(rows, labels, ks)
    assert metrics == ranking.format_table(expect)  # eval's table with intervals and verdict
    assert expect["trained"]["average_precision"] == pytest.approx(0.5) and "AUROC" in metrics
    assert "trained vs random: too few labels to tell" in metrics
    assert "@50, @100 left out: only 13 scored clips are labelled" in section(page, "Ranking metrics")
    assert "no masked_gap row" in section(page, "Ranking metrics")
    # scores from an infer.py that writes masked_gap per clip: the baseline gets its row, as in eval.py
    gaps = {r["clip_id"]: round(0.2 - (r["score"] or 0), 6) for r in rows}
    with_gaps = [{**r, "masked_gap": gaps[r["clip_id"]]} for r in rows]
    write_jsonl(args[args.index("--scores") + 1], with_gaps)
    metrics = html.unescape(section(build(monkeypatch, args), "Ranking metrics").split("<pre>")[1]
                            .split("</pre>")[0])
    assert metrics == ranking.format_table(report.compare_labelled(with_gaps, labels, ks, with_gap=True))
    assert any(line.startswith("masked_gap") for line in metrics.splitlines())


def test_selection_prechecked_with_folded_duplicates(review, monkeypatch):
    args, rows, records = review
    page = build(monkeypatch, args)
    p = Parsed(page)
    checked = [b["data-id"] for b in p.all("input", **{"class": "pick"}) if "checked" in b]
    picks = [rows[13]["clip_id"], HOSTILE, "ghost" + HOSTILE]
    assert checked == picks + [rows[13]["clip_id"], HOSTILE]  # the selection, then the cards below
    sel = section(page, "Selection (3 picks)")
    folded = sel.split("<details>")[1].split("</details>")[0]
    assert "<summary>2 folded in</summary>" in folded and "0.970" in folded and "scene_quota" in folded
    assert html.escape("dup" + HOSTILE) in folded and f'href="#c2">{rows[14]["clip_id"]}</a>' in folded
    assert "folded under selection pick #1" in page.split('id="c2">')[1].split("</article>")[0]
    assert "selection pick #2" in section(page, "Bottom 3")


@pytest.mark.parametrize("line, problem", [
    ({"clip_id": "a", "score": 0.1}, "rank must be an integer above the previous line's (1)"),
    ({"rank": 1, "clip_id": "a", "score": 0.1}, "rank must be an integer above the previous line's (1)"),
    ({"rank": 2, "clip_id": "a", "score": "x"}, "score must be a number"),
    ({"rank": 2, "clip_id": "a", "score": 0.1, "near_duplicates": [{"clip_id": "b", "reason": "?"}]},
     "near_duplicates must be a list of"),
    ({"rank": 2, "clip_id": "a", "score": 0.1, "last_timestamp": "9"}, "last_timestamp must be a number"),
])
def test_malformed_selection_is_one_line(scored, tmp_path, monkeypatch, capsys, line, problem):
    sel = write_jsonl(tmp_path / "selection.jsonl", [{"rank": 1, "clip_id": "ok", "score": 0.2}, line])
    out = tmp_path / "r.html"
    assert run_report(monkeypatch, "--scores", scored[0], "--selection", sel, "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {sel}:2: {problem}") and err.count("\n") == 1


def test_export_lines_come_from_the_page(review, monkeypatch):
    """What the export buttons write, rebuilt from the page's embedded lines the way its script joins them,
    against hand-written CSV (quoting included) and JSONL."""
    args, rows, records = review
    p = Parsed(build(monkeypatch, args))
    bar = p.all("div", id="export")[0]
    seen, boxes = set(), []
    for b in p.all("input", **{"class": "pick"}):
        if "checked" in b and b["data-id"] not in seen:  # a clip listed twice exports once
            seen.add(b["data-id"])
            boxes.append(b)
    csv_text = bar["data-header"] + "\r\n" + "".join(b["data-csv"] + "\r\n" for b in boxes)
    f13 = records[13]["frames"]
    f1 = records[1]["frames"]
    assert csv_text == (
        "clip_id,scene,camera,score,first_frame,last_frame,first_timestamp,last_timestamp\r\n"
        f"scene_4__CAM_FRONT__001,scene_4,CAM_FRONT,0.13,{f13[0]},{f13[-1]},800000,1500000\r\n"
        f'"evil""\'><img src=x onerror=alert(1)>",scene_0,"evil""\'><img src=x onerror=alert(1)>",0.01,'
        f'"{f1[0].replace(chr(34), 2 * chr(34))}",{f1[-1]},800000,1500000\r\n'
        f'"ghost{HOSTILE.replace(chr(34), 2 * chr(34))}",{EVIL},cam,0.5,/g/a.jpg,/g/b.jpg,5,9\r\n')
    parsed = list(csv.DictReader(io.StringIO(csv_text)))
    assert parsed[1]["clip_id"] == HOSTILE and parsed[1]["first_frame"] == f1[0]
    assert [json.loads(b["data-json"]) for b in boxes][1] == {
        "clip_id": HOSTILE, "scene": "scene_0", "camera": HOSTILE, "score": 0.01, "first_frame": f1[0],
        "last_frame": f1[-1], "first_timestamp": 800000, "last_timestamp": 1500000}


def test_page_works_without_scripts(review, monkeypatch):
    args, rows, records = review
    page = build(monkeypatch, args)
    p = Parsed(page)
    assert not p.errors and not p.open, (p.errors, p.open)  # every element closed in order
    assert len(p.scripts) == 1 and p.scripts[0] == report.SCRIPT + report.LABEL_SCRIPT
    assert len(report.SCRIPT) < 2000
    assert not [a for _, attrs in p.tags for a in attrs if a.startswith("on")]  # no inline handlers
    ids = [a["id"] for _, a in p.tags if "id" in a]
    assert len(ids) == len(set(ids))
    targets = {a["href"][1:] for _, a in p.tags if a.get("href", "").startswith("#")}
    assert targets and targets <= set(ids)  # large views and card links resolve with no script
    assert ".view:target{display:block" in page and "<noscript>" in page
    assert all("disabled" in b for b in p.all("button"))  # inert until the script enables them
    assert all(a["src"].startswith("data:") for a in p.all("img"))
    # full-size frames are CSS backgrounds of the (hidden) large view: fetched only once it opens
    n_cards = 2 + 8  # two scored pick cards, then the eight listed clips
    assert len([a for a in p.all("a", role="img") if "background-image:url(" in a["style"]]) == n_cards * 8


def test_hostile_names_are_escaped_everywhere(review, monkeypatch):
    args, rows, records = review
    page = build(monkeypatch, args)
    assert HOSTILE not in page and EVIL not in page and "<img src=x" not in page
    p = Parsed(page)
    assert len(p.scripts) == 1 and not p.all("img", src="x")
    attrs = [v for _, a in p.tags for v in a.values() if v and "onerror" in v]  # parsed back, unescaped
    assert {a for a in attrs if a == HOSTILE} and any(json.dumps(HOSTILE)[1:-1] in a for a in attrs)
    assert page.count(html.escape(HOSTILE)) >= 5  # card, large view, selection, misses, folded duplicate


def test_size_budget_for_top_50(demo_data, tmp_path, monkeypatch):
    """60 clips of demo frames (50 top + 10 bottom, all with previews) stay far under the 10 MB budget."""
    records = read_manifest(demo_data)
    clips = [{**r, "clip_id": f"{r['clip_id']}_{k}"} for k in range(4) for r in records]
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": c["clip_id"], "scene_id": c["scene"],
                                                   "frame_paths": c["frames"], "timestamps": c["timestamps"]}
                                                  for c in clips])
    scores = write_jsonl(tmp_path / "s.jsonl", [{"clip_id": c["clip_id"], "scene": c["scene"],
                                                 "score": i / 60, "tubelet_scores": [0.1, 0.3, 0.2, i / 60]}
                                                for i, c in enumerate(clips)])
    out = tmp_path / "r.html"
    page = build(monkeypatch, ["--scores", scores, "--manifest", manifest, "--top", 50, "--output", out])
    assert page.count('<img class="pv"') == 60
    assert out.stat().st_size < 10e6


CHROMIUM = "/usr/bin/chromium"


def chromium_dom(page_path):
    """The page's DOM after headless Chromium ran its script (skips where Chromium is not installed)."""
    import shutil
    import subprocess
    if not shutil.which(CHROMIUM):
        pytest.skip("headless Chromium not installed (make browser)")
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          "--virtual-time-budget=3000", Path(page_path).absolute().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_page_leads_with_every_pick_as_a_full_card_in_chromium(review, monkeypatch):
    """Issue 23 points 1-2: the selection comes first, each scored pick a card with preview, stills and
    bars; the raw ranking follows; a low-novelty pick says why it was picked; export still counts picks."""
    args, rows, records = review
    build(monkeypatch, args)
    dom = chromium_dom(args[args.index("--output") + 1])
    assert dom.index("<h2>Selection (3 picks)") < dom.index("<h2>Top 5") < dom.index("<h2>Bottom 3")
    sel = section(dom, "Selection (3 picks)")
    cards = re.findall(r'<article class="clip[^"]*" id="(p\d+)">(.*?)</article>', sel, re.S)
    assert [a for a, _ in cards] == ["p1", "p2"]  # pick 3 is not in the scores: a text line, no card
    for _, card in cards:
        assert 'class="pv"' in card and "<svg" in card and card.count('<figure class="t') >= 4
    assert "2 folded in" in cards[0][1] and "low novelty" not in cards[0][1]
    assert "low novelty (raw rank #13 of 14)" in cards[1][1] and "ran out of distinct clips" in cards[1][1]
    assert "not in the scores file" in sel
    assert '<span id="count">3 selected</span>' in dom  # the script ran: 3 distinct picks pre-checked


def test_report_uses_the_manifest_named_in_the_scores_meta(review, monkeypatch, capsys):
    """Issue 23 point 7: `make report` without MANIFEST= still gets previews from the scored manifest."""
    args, rows, records = review
    scores, manifest = args[args.index("--scores") + 1], args[args.index("--manifest") + 1]
    Path(f"{scores}.meta.json").write_text(json.dumps({"manifest": str(manifest)}))
    bare = [a for i, a in enumerate(args) if a != "--manifest" and args[i - 1] != "--manifest"]
    page = build(monkeypatch, bare)
    assert f"using the manifest the scores came from ({manifest}" in capsys.readouterr().out
    assert len(Parsed(page).all("img", **{"class": "pv"})) == 2 + 5 + 3 and "no preview" not in page
    Path(f"{scores}.meta.json").write_text(json.dumps({"manifest": "gone/fleet.jsonl"}))
    page = build(monkeypatch, bare)
    assert "names the manifest gone/fleet.jsonl, which is not there" in capsys.readouterr().out
    assert "no preview" in page
