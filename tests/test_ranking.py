"""ranking.py: AP and AUROC against brute force, the weighted bootstrap forms, kNN density against a
brute-force cosine kNN, interval sanity, verdict wordings, confound warning, stratified sampling."""
import itertools

import numpy as np
import pytest

import ranking


def brute_ap(scores, labels):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            total += hits / rank
    return total / sum(labels)


def brute_auroc(scores, labels):
    pairs = [(p, q) for p, q in itertools.product(range(len(scores)), repeat=2)
             if labels[p] and not labels[q]]
    return sum(1.0 if scores[p] > scores[q] else 0.5 if scores[p] == scores[q] else 0.0
               for p, q in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_ap_and_auroc_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 40
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [1, 0]
    scores = rng.integers(0, 8, n).astype(float) if seed % 2 else rng.random(n)  # odd seeds: many ties
    block = ranking.ranking_metrics(dict(enumerate(scores.tolist())), dict(enumerate(labels.tolist())), [5])
    assert block["average_precision"] == pytest.approx(brute_ap(scores, labels))
    assert ranking.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels))
    # the bootstrap's weighted forms with integer weights equal the metric on the duplicated clips
    w = rng.integers(0, 3, n)
    w[:2] = 1
    dup = np.repeat(np.arange(n), w)
    desc = np.lexsort((np.arange(n), -scores))
    ap_w = ranking._weighted_ap(labels[desc], w[desc][None].astype(float))[0]
    assert ap_w == pytest.approx(brute_ap(scores[dup], labels[dup]))  # copies of a clip are adjacent ties
    asc = np.argsort(scores, kind="stable")
    start, stop = ranking._tie_bounds(scores[asc])
    auc_w = ranking._weighted_auroc(labels[asc], start, stop, w[asc][None].astype(float))[0]
    assert auc_w == pytest.approx(brute_auroc(scores[dup], labels[dup]))


def test_random_is_exact_and_half_auroc():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    out = ranking.compare({"trained": np.arange(10.0), "random": None}, labels, [3], resamples=200)
    rng = np.random.default_rng(0)
    perms = [brute_ap(rng.permutation(10).astype(float), labels) for _ in range(4000)]
    assert out["random"]["average_precision"] == pytest.approx(np.mean(perms), abs=0.01)
    assert out["random"]["auroc"] == 0.5


def test_knn_density_matches_brute_force():
    rng = np.random.default_rng(0)
    query, train = rng.normal(size=(37, 6)), rng.normal(size=(101, 6))
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    sims = qn @ tn.T
    for k in (1, 5, 200):
        expect = 1 - np.sort(sims, axis=1)[:, ::-1][:, :min(k, 101)].mean(axis=1)
        got = ranking.knn_density(query, train, k, chunk=16)  # several chunks on both sides
        assert got == pytest.approx(expect, abs=1e-5)


def separated(n, pos, gap, seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=int)
    labels[:pos] = 1
    trained = rng.normal(size=n) + gap * labels
    return labels, trained, rng.normal(size=n)


def test_interval_excludes_zero_on_strong_separation_and_spans_zero_on_none():
    labels, trained, noise = separated(200, 40, 4.0, 0)
    scenes = [f"s{i % 20}" for i in range(200)]
    methods = {"trained": trained, "masked_gap": noise, "random": None}
    out = ranking.compare(methods, labels, [10], scenes=scenes)
    d = out["differences"]["masked_gap"]["average_precision"]
    assert d["low"] > 0 and out["differences"]["masked_gap"]["verdict"] == "better"
    assert out["differences"]["random"]["verdict"] == "better"
    assert out["trained"]["ci"]["auroc"][0] > 0.9 and out["bootstrap"] == {"resamples": 1000, "unit": "scene",
                                                                             "seed": 0}
    assert "trained vs masked_gap: better" in out["verdict"] and "best by AP: trained" in out["verdict"]
    labels, a, b = separated(200, 40, 0.0, 1)
    out = ranking.compare({"trained": a, "masked_gap": b}, labels, [10])
    d = out["differences"]["masked_gap"]
    assert d["average_precision"]["low"] < 0 < d["average_precision"]["high"]
    assert d["verdict"] == "not distinguishable" and out["bootstrap"]["unit"] == "clip"
    assert "not distinguishable on these 200 labelled clips (40 positive)" in out["verdict"]
    again = ranking.compare({"trained": a, "masked_gap": b}, labels, [10])
    assert again["differences"] == out["differences"]  # seeded


def test_worse_and_too_few_labels():
    labels, trained, other = separated(200, 40, 4.0, 2)
    out = ranking.compare({"probe": other, "trained": trained}, labels, [10], reference="probe")
    assert out["differences"]["trained"]["verdict"] == "worse"
    assert "probe vs trained: worse" in out["verdict"]
    labels, trained, other = separated(60, 6, 1.0, 3)
    out = ranking.compare({"trained": trained, "masked_gap": other}, labels, [10])
    d = out["differences"]["masked_gap"]
    assert d["verdict"] == "too few labels"
    assert d["labels_needed"]["positives"] >= 10 and "sqrt" in d["labels_needed"]["how"]
    assert "too few labels to tell (6 positive, need >= 10)" in out["verdict"]
    text = ranking.format_table(out)
    assert "AUROC" in text and "trained" in text and out["verdict"] in text


def test_confound_warning_names_the_scene():
    labels = np.array([1] * 6 + [0] * 14 + [1] * 4)
    scenes = ["busy"] * 6 + [f"q{i}" for i in range(14)] + ["a", "b", "c", "d"]
    warns = ranking.confound_warnings(labels, np.array(scenes))
    assert len(warns) == 1 and "'busy'" in warns[0] and "more than half" in warns[0]
    labels = np.array([1, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    scenes = np.array(["all", "all", "all", "m", "m", "n", "n", "o", "o", "p", "p", "q"])
    warns = ranking.confound_warnings(labels, scenes)
    assert len(warns) == 1 and "'all'" in warns[0] and "all 3 of its labelled clips are positive" in warns[0]
    assert ranking.confound_warnings(np.array([1, 0, 1, 0]), np.array(["a", "a", "b", "b"])) == []


def test_stratified_sample_counts_and_seed():
    scenes = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    pick = ranking.stratified_sample(scenes, 10, seed=3)
    counts = {s: sum(scenes[i] == s for i in pick) for s in "abc"}
    assert counts == {"a": 5, "b": 3, "c": 2} and len(set(pick)) == 10
    assert pick == ranking.stratified_sample(scenes, 10, seed=3)
    assert pick != ranking.stratified_sample(scenes, 10, seed=4)
    odd = ranking.stratified_sample(scenes, 7, seed=0)  # 3.5, 2.1, 1.4 -> 4, 2, 1 by largest remainder
    assert [sum(scenes[i] == s for i in odd) for s in "abc"] == [4, 2, 1]
    assert ranking.stratified_sample(scenes, 500, seed=0) == list(range(100))


def test_sample_labels_writes_a_stratified_template(tmp_path, capsys):
    import json

    import cli
    import sample_labels
    scores = tmp_path / "scores.jsonl"
    rows = [{"clip_id": f"c{i:03d}", "scene": "ab"[i % 4 == 0], "camera": "CAM", "first_frame": f"f{i}.jpg",
             "score": None if i == 5 else i / 100} for i in range(100)]
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sample_labels.main(["--scores", str(scores), "--n", "20", "--seed", "1"])
    out = [json.loads(x) for x in (tmp_path / "labels_sample.jsonl").read_text().splitlines()]
    assert len(out) == 20 and all(r["binary_label"] is None and r["source"] == "random_sample" for r in out)
    assert "c005" not in {r["clip_id"] for r in out}  # its score is null: a failed clip
    scene = {r["clip_id"]: r["scene"] for r in rows}
    assert sum(scene[r["clip_id"]] == "b" for r in out) == 5  # 25 of the 99 scored clips are scene b
    csv_lines = (tmp_path / "labels_sample.csv").read_text().splitlines()
    assert csv_lines[0] == "clip_id,scene,camera,first_frame,binary_label" and len(csv_lines) == 21
    first = (tmp_path / "labels_sample.jsonl").read_text()
    sample_labels.main(["--scores", str(scores), "--n", "20", "--seed", "1", "--output",
                        str(tmp_path / "b.jsonl")])
    assert (tmp_path / "b.jsonl").read_text() == first and "sampled 20 of 99" in capsys.readouterr().out
    with pytest.raises(cli.UserError, match="--n 0: must be >= 1"):
        sample_labels.main(["--scores", str(scores), "--n", "0"])


def test_eval_flags_labels_taken_from_a_selection(tmp_path):
    import json

    import eval as evaluation
    sel = tmp_path / "selection.jsonl"
    folded = {"clip_id": "b", "score": 0.4, "similarity": 0.99, "reason": "near_duplicate"}
    sel.write_text(json.dumps({"rank": 1, "clip_id": "a", "score": 0.5, "near_duplicates": [folded]}) + "\n"
                   + json.dumps({"rank": 2, "clip_id": "c", "score": 0.3, "near_duplicates": []}) + "\n")
    selected = evaluation.selected_clip_ids(sel)
    assert selected == {"a", "b", "c"}
    block = {"warnings": []}
    evaluation.selection_warning(block, {"a": 1, "b": 0, "c": None, "d": 1}, selected, sel)
    assert block["labels_from_selection"] == 2 and "biased upward" in block["warnings"][0]
    block = {"warnings": []}
    evaluation.selection_warning(block, {"d": 1}, selected, sel)
    assert block == {"warnings": [], "labels_from_selection": 0}
    # without a selection file, the review page's source field tells (a random sample's does not count)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in [
        {"clip_id": "a", "binary_label": 1, "source": "selection"}, {"clip_id": "b", "binary_label": 0,
                                                                    "source": "ranking"},
        {"clip_id": "e", "binary_label": 1, "source": "random_sample"}, {"clip_id": "f", "binary_label": 0}]))
    ranked = evaluation.ranked_label_ids(labels)
    assert ranked == {"a", "b"}
    block = {"warnings": []}
    evaluation.selection_warning(block, evaluation.read_labels(labels), ranked, None)
    assert block["labels_from_selection"] == 2
    assert block["warnings"][0].startswith("2 of the labelled clips came from the review page (their source")


def test_knn_baseline_unavailable_without_a_features_cache(tmp_path):
    import eval as evaluation
    emb, why = evaluation.training_clip_embeddings(tmp_path / "best.pt", {}, {}, tmp_path)
    assert emb is None and "no features/ cache" in why and str(tmp_path) in why


def test_training_clip_embeddings_saved_by_train_equal_those_derived_from_features(tmp_path, reference):
    import yaml

    import eval as evaluation
    import jepa
    ckpt = jepa.load_checkpoint(reference / "best.pt")
    cfg = yaml.safe_load((reference / "config.yaml").read_text())
    saved, why = evaluation.training_clip_embeddings(reference / "best.pt", ckpt, cfg, tmp_path)
    assert why is None and not (tmp_path / "train_clip_emb.npy").exists()  # the run folder's own file
    # a file from other features (its fingerprint differs) is not trusted: derived from features/ instead
    derived, why = evaluation.training_clip_embeddings(reference / "best.pt", {**ckpt, "features_fingerprint":
                                                                             "other"}, cfg, tmp_path)
    assert why is None and (tmp_path / "train_clip_emb.npy").is_file() and derived.shape == saved.shape
    assert saved.shape[0] >= 10 and saved[0:2].dtype == np.float32  # 12 of the 15 demo clips train

    def by_rows(a):
        a = a[0:len(a)]  # NpyRows: read on demand, a slice at a time
        return a[np.lexsort(a.T)]
    np.testing.assert_allclose(by_rows(saved), by_rows(derived), rtol=0, atol=1e-6)
