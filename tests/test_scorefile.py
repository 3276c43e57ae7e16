"""scorefile.py: one reader of the scores files, so report, select, learn, sample-for-labels and the merge
refuse a damaged file with the same `file:line` message and treat a NaN score alike."""
import json
import math

import numpy as np
import pytest

import cli
import infer
import report
import sample_labels
import scorefile
import selection
from conftest import write_jsonl

READERS = {  # each command's way into a scores file
    "report": report.read_scores,
    "select": selection.Scores,
    "sample": lambda p: sample_labels.main(["--scores", str(p), "--output", str(p.parent / "t.jsonl")]),
    "merge": lambda p: infer.main(["--merge", str(p), "--manifest", str(p), "--output", str(p.parent / "m")]),
}


def scores_file(path, text, dim=2):
    path.write_text(text)
    n = text.count("\n")
    np.save(f"{path}.emb.npy", np.zeros((n, dim), np.float32))
    (path.parent / f"{path.name}.meta.json").write_text(json.dumps({"embed_dim": dim}))
    return path


@pytest.mark.parametrize("text, message", [
    ('{"clip_id": "a", "score": 0.1}\n{"clip_id": "a", "score": 0.2}\n', "2: duplicate clip_id 'a' (first on "
                                                                          "line 1)"),
    ('{"clip_id": "a", "score": 0.1}\n\n', "2: blank line"),
    ('{"clip_id": "a", "score": 0.1}\n{"clip_id": "b"', "2: torn last line"),
    ('{"clip_id": "a", "score": "high"}\n', "1: score must be a number or null"),
    ('{"score": 0.1}\n', "1: not a scores line"),
    ('', "empty scores file"),
])
def test_every_reader_refuses_a_damaged_file_alike(tmp_path, text, message):
    path = scores_file(tmp_path / "s.jsonl", text)
    for name, read in READERS.items():
        with pytest.raises(cli.UserError) as e:
            read(path)
        assert f"{path}:{message}" in str(e.value) or f"{path}: {message}" in str(e.value), name
        assert "\n" not in str(e.value), name


def test_a_nan_score_is_a_failed_clip_for_every_reader(tmp_path):
    path = scores_file(tmp_path / "s.jsonl",
                       '{"clip_id": "a", "score": NaN}\n{"clip_id": "b", "score": 0.5}\n')
    assert math.isnan(selection.Scores(path).score[0]) and selection.Scores(path).score[1] == 0.5
    clips = report.read_scores(path)
    assert clips[0]["score"] is None and clips[0]["error"] == "score is nan" and clips[1]["score"] == 0.5
    sample_labels.main(["--scores", str(path), "--output", str(tmp_path / "t.jsonl")])
    assert [json.loads(x)["clip_id"] for x in open(tmp_path / "t.jsonl")] == ["b"]
    assert scorefile.read_meta(path) == {"embed_dim": 2}


def test_npy_rows_reads_slices_and_stops_at_n(tmp_path):
    from scorefile import NpyRows
    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "a.npy", data)
    rows = NpyRows(tmp_path / "a.npy", n=7)
    assert len(rows) == 7 and rows.shape == (7, 4)
    np.testing.assert_array_equal(rows[2:5], data[2:5])
    np.testing.assert_array_equal(rows[5:100], data[5:7])  # clipped at n, as a numpy slice is at its length
    assert rows[6:3].shape == (0, 4)
    np.save(tmp_path / "b.npy", data.astype(np.float64))
    with pytest.raises(ValueError, match="float32"):
        NpyRows(tmp_path / "b.npy")
