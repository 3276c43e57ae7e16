"""report.py: ranking metrics against hand-computed values, and the self-contained HTML report."""
import base64
import io
import itertools
import json
import math
import re
import sys

import pytest
from PIL import Image

import jepa
from manifest import read_manifest
import eval as evaluation
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
    base = evaluation.random_baseline(labels, ks, {c: 0.0 for c in "abcden"})
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
    base = evaluation.random_baseline(labels, [2], {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "late": None})
    assert base["average_precision"] == pytest.approx(98 / 144)
    assert base["ndcg_at_k"]["2"] == pytest.approx(0.5)  # rate * ideal / ideal
    assert base["num_labelled"] == 4
    counted = evaluation.random_baseline({"a": 1, "b": 0}, [1], 2)  # an int: every labelled clip was scored
    assert counted["average_precision"] == pytest.approx(0.75) and counted["precision_at_k"]["1"] == 0.5
    none = evaluation.random_baseline({"a": 0}, [1], 1)
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
        with pytest.raises(jepa.UserError, match=re.escape(expect)):
            evaluation.read_labels(bad)
    with pytest.raises(jepa.UserError, match="labels file not found"):
        evaluation.read_labels(tmp_path / "missing.jsonl")


# ---- the HTML report ----

EVIL = "<script>alert(1)</script>"


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


def expected_order(rows):
    return [r["clip_id"] for r in sorted((r for r in rows if r["score"] is not None),
                                         key=lambda r: (-r["score"], r["clip_id"]))]


def section(page, title):
    """The HTML between the <h2> starting with `title` and the next <h2>."""
    return page.split(f"<h2>{title}")[1].split("<h2>")[0]


def clip_ids(html_part):
    return [m.replace("<wbr>", "") for m in re.findall(r"<td class=\"id\"><b>(.*?)</b>", html_part)]


def run_report(monkeypatch, *args):
    """report.py's CLI in this process, through jepa.run_cli as `python report.py` runs it (but without a
    second torch import); returns the exit status."""
    monkeypatch.setattr(sys, "argv", ["report.py", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        jepa.run_cli(report.main)
    return e.value.code


def test_report_is_self_contained_and_ordered(scored, demo_data, tmp_path):
    scores, rows = scored
    out = tmp_path / "out" / "report.html"
    run_script("report.py", "--scores", scores, "--manifest", demo_data, "--top", 5, "--bottom", 3,
               "--output", out, check=True)
    page = out.read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/jpeg;base64,") for s in srcs)
    Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))).verify()
    order = expected_order(rows)
    assert clip_ids(section(page, "Top")) == order[:5]
    assert clip_ids(section(page, "Bottom")) == order[::-1][:3]  # lowest first
    failed = rows[7]["clip_id"]
    assert failed not in section(page, "Top") + section(page, "Bottom")
    assert failed in section(page, "Failed") and "cannot read a frame &lt;bad&gt;" in page
    assert "14 scored, 1 failed" in page
    assert "top 5: score" in section(page, "Score distribution")
    assert 'href="file:///' in page
    assert len(re.findall(r"<figure", section(page, "Top"))) >= 5 * 4  # a strip across each clip


def test_report_tie_order_and_large_top(scored, tmp_path, monkeypatch):
    scores, rows = scored
    out = tmp_path / "r.html"
    assert run_report(monkeypatch, "--scores", scores, "--output", out) == 0  # top 50 > 14 scored clips
    page = out.read_text()
    assert clip_ids(section(page, "Top")) == expected_order(rows)
    assert "every scored clip is already in the top section" in section(page, "Bottom")
    assert "checkpoint</b></td><td>unknown" in page
    # without --manifest: one thumbnail (the first frame) per clip
    assert len(re.findall(r"<figure", page)) == 14


def test_report_placeholders_and_meta(scored, tmp_path, monkeypatch):
    scores, rows = scored
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    rows[0]["first_frame"] = str(tmp_path / "missing.jpg")
    rows[1]["first_frame"] = str(tmp_path / "empty.jpg")
    rows[2].pop("first_frame")
    write_jsonl(scores, rows)
    (tmp_path / "scores.jsonl.meta.json").write_text(json.dumps({"checkpoint": "run/best.pt", "encoder": "enc<x>"}))
    out = tmp_path / "r.html"
    assert run_report(monkeypatch, "--scores", scores, "--output", out) == 0
    page = out.read_text()
    assert page.count('class="ph"') == 3
    assert "run/best.pt" in page and "enc&lt;x&gt;" in page


def test_thumbnails_stay_small(tmp_path, demo_data):
    frames = sorted(REALDATA.glob("frames/*/*.jpg"))[:3] if REALDATA.is_dir() else []
    frames = frames or read_manifest(demo_data)[0]["frames"][:3]
    for f in frames:
        uri = report.thumbnail(f)
        assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 15_000  # 50 clips x 5 stay < 4 MB


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


def test_duplicate_clip_ids_are_refused(tmp_path):
    dup = write_jsonl(tmp_path / "labels.jsonl", [{"clip_id": "a", "binary_label": 1},
                                                  {"clip_id": "a", "binary_label": 0}])
    with pytest.raises(jepa.UserError, match=re.escape(f"{dup}:2: duplicate clip_id 'a' (first on line 1)")):
        evaluation.read_labels(dup)
