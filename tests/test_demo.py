"""demo.py: on its synthetic data the trained head must do what the demo says, on several seeds: rank the
planted clips above random and put them in the report's top section. Runs the demo's own steps in this process
(no interpreter start-up per step); about 15 s per seed."""
import json
import re

import pytest
import torch

import demo


@pytest.fixture
def one_thread():
    """The tiny encoder's ops are too small for threads to pay off: on a busy CPU, 1 thread is several times
    faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", [0, 7, 42])
def test_demo_ranks_planted_clips_first(tmp_path, seed, one_thread):
    found = demo.run_demo(tmp_path / "data", tmp_path / "run", seed=seed, step=demo.run_in_process)
    ranking = found["ranking"]
    assert ranking["trained"]["num_labelled"] == 18 and ranking["trained"]["num_positive"] == 3
    assert ranking["trained"]["average_precision"] > ranking["random"]["average_precision"], found["verdict"]
    assert found["verdict"].startswith(
        "verdict: the trained head ranks the planted clips best"), found["verdict"]
    assert sorted(found["ranks"].values())[-1] <= 6, found["ranks"]  # all within the report's top 6
    html = (tmp_path / "run" / "report.html").read_text().replace("<wbr>", "")
    top, bottom = re.split(r"<h2>Bottom", html, maxsplit=1)
    for clip_id in found["planted"]:
        assert clip_id in top.split("<h2>Top", 1)[1] and clip_id not in bottom, clip_id
    labels = [json.loads(line)
              for line in (tmp_path / "data" / "fleet_labels.jsonl").read_text().splitlines()]
    assert sorted(r["clip_id"] for r in labels if r["binary_label"] == 1) == found["planted"]
    sel = found["selection"]
    words = demo.selection_words(sel)
    assert sel["picked"] == 6 or f"{sel['picked']} picks, not 6: the batch ran out" in words
    train = (tmp_path / "data" / "train.jsonl").read_text()
    assert "fleet_" not in train and all(json.loads(line).get("split") is None for line in train.splitlines())


def test_verdict_says_which_baseline_won():
    def ranking(trained, gap, rnd):
        return {m: {"average_precision": ap} for m, ap in (("trained", trained), ("masked_gap", gap),
                                                             ("random", rnd))}
    assert demo.verdict(ranking(0.9, 0.5, 0.29)).startswith(
        "verdict: the trained head ranks the planted clips best")
    assert "training did not help" in demo.verdict(ranking(0.5, 0.9, 0.29))
    assert "no better than random" in demo.verdict(ranking(0.2, 0.9, 0.29))
    assert "nothing to rank" in demo.verdict(ranking(None, None, None))
    assert all(len(demo.verdict(ranking(*v))) <= 110
               for v in [(0.9, 0.5, 0.29), (0.5, 0.9, 0.29), (0.2, 0.9, 0.29)])


def test_fixture_data_is_unchanged(tmp_path):
    """conftest's fixtures build on make_clips' defaults: 5 scenes x 3 clips x 8 frames, two labelled
    clips."""
    manifest = demo.make_clips(tmp_path)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 15 and all(len(r["frame_paths"]) == 8 for r in rows)
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert sum(r["binary_label"] for r in labels) == 2


def test_short_selection_says_why():
    """Issue 23 point 2: fewer picks than TOP is said, with the reason and the settings to change."""
    import selection
    sel = {"top": 6, "picked": 5, "scored": 18, "near_duplicate": 12, "scene_quota": 1,
           "max_similarity": 0.95, "per_scene": 0}
    words = demo.selection_words(sel)
    assert words.startswith("5 picks, not 6: the batch ran out of distinct clips, the other 13 being "
                            "near-duplicates of a pick (12) or over the scene quota (1)")
    assert demo.selection_words({**sel, "picked": 6}) == "a diverse top 6"
    note = selection.short_words(sel)
    assert note.startswith("note: 5 picks, not the 6 asked for: the batch ran out of distinct clips")
    assert "raise selection.max_similarity (now 0.95)" in note and "selection.per_scene (now none)" in note
