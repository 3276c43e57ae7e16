"""selection.py: make select (greedy, deterministic, folds every skipped clip once) and make similar, on small
hand-made scores/embeddings files."""
import csv
import json
import re

import numpy as np
import pytest

import cli
import selection
from manifest import read_manifest
from conftest import run_script, write_jsonl


def write_inputs(folder, clips, name="scores.jsonl"):
    """clips: [(clip_id, scene, score | None, embedding | None)] -> scores path (+ S.emb.npy, S.meta.json)."""
    dim = len(next(e for *_, e in clips if e is not None))
    rows = []
    for cid, scene, score, _ in clips:
        row = {"clip_id": cid, "scene": scene, "camera": "CAM_FRONT", "first_frame": f"/f/{cid}_0.jpg",
               "score": score, "tubelet_scores": [] if score is None else [score]}
        rows.append(row if score is not None else dict(row, error="frame unreadable"))
    scores = write_jsonl(folder / name, rows)
    emb = np.array([np.full(dim, np.nan) if e is None else e for *_, e in clips], np.float32)
    np.save(f"{scores}.emb.npy", emb)
    (folder / f"{name}.meta.json").write_text(json.dumps({"embed_dim": dim, "encoder_fingerprint": "x"}))
    return scores


# a: picked. b: cosine 0.96 to a. c: ties b at 0.8, picked. d: a's scene, cosine 0 to a. e: picked.
# f: failed. g: near-duplicate of c but after the third pick, so never walked.
HAND = [("a", "s1", 0.9, [1, 0, 0]), ("b", "s1", 0.8, [0.96, 0.28, 0]), ("c", "s2", 0.8, [0, 1, 0]),
        ("d", "s1", 0.7, [0, 0, 2]), ("e", "s3", 0.6, [0.6, 0.8, 0]), ("f", "s4", None, None),
        ("g", "s4", 0.5, [0, 0.999, 0.0447])]


def select(scores, out, *args):
    selection.main(["select", "--scores", str(scores), "--output", str(out), *map(str, args)])
    return [json.loads(line) for line in out.read_text().splitlines()]


def folds(picks):
    return {p["clip_id"]: [(d["clip_id"], d["similarity"], d["reason"]) for d in p["near_duplicates"]]
            for p in picks}


def test_select_hand_checked(tmp_path, capsys):
    scores = write_inputs(tmp_path, HAND)
    out = tmp_path / "sel.jsonl"
    picks = select(scores, out, "--top", 3, "--set", "selection.per_scene=1")
    assert folds(picks) == {"a": [("b", 0.96, "near_duplicate"), ("d", 0.0, "scene_quota")], "c": [], "e": []}
    assert picks[0] == {"rank": 1, "clip_id": "a", "scene": "s1", "camera": "CAM_FRONT", "score": 0.9,
                        "first_frame": "/f/a_0.jpg", "last_frame": None, "first_timestamp": None,
                        "last_timestamp": None, "near_duplicates": picks[0]["near_duplicates"]}
    assert [p["rank"] for p in picks] == [1, 2, 3]
    with open(tmp_path / "sel.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["rank"], r["clip_id"], r["score"], r["near_duplicates"]) for r in table] == \
        [("1", "a", "0.9", "2"), ("2", "c", "0.8", "0"), ("3", "e", "0.6", "0")]
    assert list(table[0]) == [*selection.PICK_COLUMNS, "near_duplicates"]
    meta = json.loads((tmp_path / "sel.jsonl.meta.json").read_text())
    assert (meta["picked"], meta["walked"], meta["near_duplicate"], meta["scene_quota"]) == (3, 5, 1, 1)
    # nearest-neighbour cosines among the raw top 3 (a, b, c): a-b 0.96, c-b 0.28
    assert meta["nearest_neighbour_cosine"]["quantiles"]["max"] == 0.96
    assert meta["nearest_neighbour_cosine"]["share_at_or_above"]["0.95"] == pytest.approx(2 / 3, abs=1e-4)
    assert "nearest-neighbour cosine among the raw top 3" in capsys.readouterr().out

    # a stricter threshold turns b into a scene-quota fold (with its cosine to a); no quota lets d in
    loose = select(scores, out, "--top", 3, "--set", "selection.per_scene=1",
                   "--set", "selection.max_similarity=0.97")
    assert folds(loose)["a"] == [("b", 0.96, "scene_quota"), ("d", 0.0, "scene_quota")]
    free = select(scores, out, "--top", 3, "--set", "selection.per_scene=0")
    assert [p["clip_id"] for p in free] == ["a", "c", "d"]
    assert folds(free)["a"] == [("b", 0.96, "near_duplicate")]


def test_select_label_metrics_hand_checked(tmp_path, capsys):
    scores = write_inputs(tmp_path, HAND)
    truth = {"a": 1, "b": 1, "c": 0, "d": 1, "e": 1, "g": 0}
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"clip_id": c, "binary_label": v}
                                                     for c, v in truth.items()])
    select(scores, tmp_path / "sel.jsonl", "--top", 3, "--labels", labels, "--set", "selection.per_scene=1",
           "--set", "evaluation.k_values=[2, 10]")
    m = json.loads((tmp_path / "sel.jsonl.meta.json").read_text())["ranking"]
    # raw: a b c d e g -> 1 1 0 1 1 0; selection: picks a c e, then b d g -> 1 0 1 1 1 0
    assert m["raw"]["average_precision"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)
    assert m["selection"]["average_precision"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 5) / 4)
    assert m["raw"]["precision_at_k"] == pytest.approx({"2": 1.0, "3": 2 / 3})  # k_values below TOP, and TOP
    assert m["selection"]["precision_at_k"] == pytest.approx({"2": 0.5, "3": 2 / 3})
    assert m["raw"]["positive_scenes_at_k"] == {"2": 1, "3": 1}  # a, b: both s1
    assert m["selection"]["positive_scenes_at_k"] == {"2": 1, "3": 2}  # a (s1), e (s3)
    iv = m["intervals"]  # the same AP through ranking.compare, with intervals and a verdict
    assert iv["trained"]["average_precision"] == pytest.approx(m["raw"]["average_precision"])
    assert iv["selection"]["average_precision"] == pytest.approx(m["selection"]["average_precision"])
    assert iv["differences"]["random"]["verdict"] == "too few labels" and iv["random"]["auroc"] == 0.5
    out = capsys.readouterr().out
    assert "scenes@3" in out and "selection" in out and "AUROC" in out and iv["verdict"] in out
    assert "bias these metrics upward" in out


def random_clips(n=400, dim=8, seed=0):
    """Clusters of near-duplicates over 25 scenes, scores rounded to 2 decimals (many ties), some failed."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    clips = []
    for i in range(n):
        c = rng.integers(40)
        emb = centres[c] + rng.normal(scale=0.15 + 0.3 * (i % 3), size=dim)
        failed = i % 37 == 0
        score = None if failed else round(float(rng.uniform(0, 1) * 0.3 + c / 60), 2)
        clips.append((f"c{i * 7919 % n:03d}", f"s{rng.integers(25)}", score, None if failed else emb))
    return clips


def reference_select(clips, top, max_similarity, per_scene):
    """The issue's rule, written plainly: [(pick, [(clip, pick it folds under, reason)])]."""
    unit = {c: np.asarray(e, float) / np.linalg.norm(e) for c, _, s, e in clips if s is not None}
    scene = {c: sc for c, sc, _, _ in clips}
    order = sorted(unit, key=lambda c: (-next(s for cc, _, s, _ in clips if cc == c), c))
    picks, folded = [], {}
    for c in order:
        if len(picks) == top:
            break
        sims = [float(unit[c] @ unit[p]) for p in picks]
        same = [p for p in picks if scene[p] == scene[c]]
        if sims and max(sims) >= max_similarity:
            folded[c] = (picks[int(np.argmax(sims))], "near_duplicate")
        elif per_scene and len(same) >= per_scene:
            folded[c] = (max(same, key=lambda p: float(unit[c] @ unit[p])), "scene_quota")
        else:
            picks.append(c)
    return picks, folded, order


@pytest.mark.parametrize("top,max_similarity,per_scene", [(30, 0.9, 2), (60, 0.8, 0), (400, 0.95, 3)])
def test_select_matches_the_rule_and_folds_each_skipped_clip_once(tmp_path, top, max_similarity, per_scene):
    clips = random_clips()
    scores = write_inputs(tmp_path, clips)
    picks = select(scores, tmp_path / "sel.jsonl", "--top", top, "--set",
                   f"selection.max_similarity={max_similarity}", "--set", f"selection.per_scene={per_scene}")
    ref_picks, ref_folded, order = reference_select(clips, top, max_similarity, per_scene)
    assert [p["clip_id"] for p in picks] == ref_picks
    got = {d["clip_id"]: (p["clip_id"], d["reason"]) for p in picks for d in p["near_duplicates"]}
    assert got == ref_folded
    listed = [p["clip_id"] for p in picks] + [d["clip_id"] for p in picks for d in p["near_duplicates"]]
    assert len(listed) == len(set(listed))  # exactly once
    assert set(listed) == set(order[:len(listed)])  # every walked clip and only those: a ranking prefix
    emb = {c: np.asarray(e, float) / np.linalg.norm(e) for c, _, s, e in clips if s is not None}
    for p in picks:
        for d in p["near_duplicates"]:
            assert d["similarity"] == pytest.approx(float(emb[d["clip_id"]] @ emb[p["clip_id"]]), abs=1e-6)
            assert (d["similarity"] >= max_similarity) == (d["reason"] == "near_duplicate")
    unit = np.array([emb[p["clip_id"]] for p in picks])
    gram = unit @ unit.T - 2 * np.eye(len(picks))
    assert gram.max() < max_similarity  # limit 1: no two picks are near-duplicates
    if per_scene:  # limit 2: the scene quota
        assert max(np.unique([p["scene"] for p in picks], return_counts=True)[1]) <= per_scene
    assert len(picks) <= top


def test_select_is_deterministic_whatever_the_file_order_or_batch(tmp_path):
    clips = random_clips(seed=1)
    a = select(write_inputs(tmp_path, clips, "a.jsonl"), tmp_path / "a_sel.jsonl")
    first = (tmp_path / "a_sel.jsonl").read_bytes()
    select(write_inputs(tmp_path, clips, "a.jsonl"), tmp_path / "a_sel.jsonl")
    assert (tmp_path / "a_sel.jsonl").read_bytes() == first
    shuffled = [clips[i] for i in np.random.default_rng(5).permutation(len(clips))]
    assert select(write_inputs(tmp_path, shuffled, "b.jsonl"), tmp_path / "b_sel.jsonl") == a

    s = selection.Scores(tmp_path / "a.jsonl")
    order = selection.walk_order(s.score, s.ids)
    emb = selection.Embeddings(s)
    def rounded(result):  # another batch size sums the products in another order: last bits differ
        picks, folded = result
        return picks, {j: [(r, round(sim, 9), why) for r, sim, why in f] for j, f in folded.items()}
    assert rounded(selection.greedy_select(order, emb, s, 50, 0.9, 2, batch=7)) == \
        rounded(selection.greedy_select(order, emb, s, 50, 0.9, 2))


def test_select_with_manifest_fills_last_frame_and_timestamps(tmp_path):
    lines = [{"clip_id": "a", "scene_id": "s1", "camera": "CAM_FRONT",
              "frame_paths": ["cam/a0.jpg", "cam/a1.jpg"], "timestamps": [100, 600]},
             {"clip_id": 'q"uote', "scene_id": "s2", "frame_paths": ["q0.jpg", "q1.jpg"],
              "timestamps": [7, 8]},
             {"scene": "s3", "camera": "front", "frames": ["/abs/d0.jpg", "/abs/d1.jpg"]}]  # derived clip_id
    manifest = write_jsonl(tmp_path / "m.jsonl", lines)
    ids = [r["clip_id"] for r in read_manifest(manifest)]
    scores = write_inputs(tmp_path, [(c, f"s{i}", 0.9 - i / 10, np.eye(3)[i]) for i, c in enumerate(ids)])
    picks = select(scores, tmp_path / "sel.jsonl", "--manifest", manifest, "--data-root", "/data")
    assert [(p["clip_id"], p["first_frame"], p["last_frame"], p["first_timestamp"], p["last_timestamp"])
            for p in picks] == [("a", "/f/a_0.jpg", "/data/cam/a1.jpg", 100, 600),
                                ('q"uote', '/f/q"uote_0.jpg', "/data/q1.jpg", 7, 8),
                                (ids[2], f"/f/{ids[2]}_0.jpg", "/abs/d1.jpg", None, None)]


def test_select_refuses_mismatched_files_and_bad_config(tmp_path):
    scores = write_inputs(tmp_path, HAND)
    np.save(f"{scores}.emb.npy", np.zeros((6, 3), np.float32))
    with pytest.raises(cli.UserError, match=r"scores.jsonl.emb.npy has 6 rows but .*scores.jsonl has 7 "):
        select(scores, tmp_path / "o.jsonl")
    np.save(f"{scores}.emb.npy", np.zeros((7, 4), np.float32))
    with pytest.raises(cli.UserError, match=r"holds 4-d rows but .*scores.jsonl.meta.json says embed_dim 3"):
        select(scores, tmp_path / "o.jsonl")
    with pytest.raises(cli.UserError, match=r"selection.max_similarity = 1.5 must be in \[-1, 1\]"):
        select(scores, tmp_path / "o.jsonl", "--set", "selection.max_similarity=1.5")
    with pytest.raises(cli.UserError, match=r"--output .*o.csv: name the picks JSONL"):
        select(scores, tmp_path / "o.csv")
    assert not (tmp_path / "o.jsonl").exists()


def test_similar_matches_brute_force(tmp_path):
    clips = random_clips(300, 16, seed=2)
    query = next(c for c, _, s, _ in clips if s is not None)
    clips.append(("twin", "s0", 0.1, next(e for c, _, _, e in clips if c == query)))  # identical embedding
    scores = write_inputs(tmp_path, clips)
    out = tmp_path / "sim.jsonl"
    selection.main(["similar", "--scores", str(scores), "--clip", query, "--k", "12", "--output", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert (got[0]["rank"], got[0]["clip_id"], got[0]["similarity"]) == (0, query, 1.0)
    assert (got[1]["clip_id"], got[1]["similarity"]) == ("twin", 1.0)

    ids = [c for c, *_ in clips]
    emb = np.load(f"{scores}.emb.npy").astype(float)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = unit @ unit[ids.index(query)]
    others = [i for i, v in enumerate(cos) if ids[i] != query and np.isfinite(v)]
    brute = sorted(others, key=lambda i: -cos[i])
    assert [g["clip_id"] for g in got[1:]] == [ids[i] for i in brute[:12]]
    assert [g["similarity"] for g in got[1:]] == pytest.approx(cos[brute[:12]], abs=1e-6)
    keys = {"rank", "clip_id", "scene", "camera", "score", "similarity", "first_frame"}
    assert all(set(g) == keys for g in got)

    s = selection.Scores(scores)  # chunks of 7 rows: the running top-k across chunks gives the same answer
    chunked = selection.nearest(selection.Embeddings(s), ids.index(query), 12, 7, s.ids)
    assert [r for r, _ in chunked] == brute[:12]


def test_similar_refuses_an_unknown_clip_in_one_line(tmp_path):
    scores = write_inputs(tmp_path, HAND)
    proc = run_script("selection.py", "similar", "--scores", scores, "--clip", "nope")
    assert proc.returncode == 2
    assert proc.stderr == f"error: {scores}: no clip 'nope' in this scores file; pass a clip_id from it\n"
    with pytest.raises(cli.UserError, match=r"scores.jsonl:6: clip 'f' has no embedding"):
        selection.main(["similar", "--scores", str(scores), "--clip", "f", "--output", str(tmp_path / "o")])


def test_top_and_k_are_typed_config_flags(tmp_path):
    scores = write_inputs(tmp_path, [("a", "s", 0.5, [1.0, 0.0])])
    for argv, message in ((["select", "--top", "0"], "config key selection.top = 0 must be >= 1"),
                          (["similar", "--clip", "a", "--k", "0"],
                           "config key selection.similar_k = 0 must be >= 1")):
        with pytest.raises(cli.UserError, match=re.escape(message)):
            selection.main([argv[0], "--scores", str(scores), *argv[1:]])
    with pytest.raises(SystemExit):  # argparse refuses a --top that is not an int, before any work
        selection.main(["select", "--scores", str(scores), "--top", "many"])
