"""Outputs of a fixed-seed run, pinned: a refactor must leave them byte-identical. The values were recorded
before the top-down restructuring (issue 10) and must never be regenerated to make a change pass; a change
that is meant to alter the numbers says so in its commit and updates them on purpose."""
import hashlib
import json
import os

import torch

import eval as evaluation
import infer
import train

# train.py --epochs 3 --seed 0 --set training.encode_chunk_clips=4, on demo.make_clips() with the seed-0 tiny
# encoder; then infer.py and eval.py with best.pt
PINNED = {
    "losses": [(0.11933233340581258, 0.09353963782389958), (0.08254497746626537, 0.06541707863410313),
               (0.06041741371154785, 0.05277957022190094)],
    "head_sha256": "b446a324a8db054138516cca483f3d568c21a26ec6c21c8ef933fd73232c5ed8",
    # first_frame as basename
    "scores_sha256": "8eb79fed7a3f3f1207f15eb8fe160dbe622a5b9f3542a6d1125724e665fa55a6",
    "eval": {"mean_cosine_similarity": 0.7516256342331569, "std_cosine_similarity": 0.05572681038911913,
             "masked_cosine_similarity": 0.038287727534770964},
}


def test_fixed_seed_run_outputs_are_pinned(tmp_path, tiny_encoder, demo_data):
    run = tmp_path / "run"
    train.main(["--manifest", str(demo_data), "--encoder", str(tiny_encoder), "--run-dir", str(run),
                "--epochs", "3", "--seed", "0", "--set", "training.encode_chunk_clips=4"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["train_loss"], m["val_loss"]) for m in metrics] == PINNED["losses"]

    state = torch.load(run / "last.pt", weights_only=True)["model_state"]
    h = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    assert h.hexdigest() == PINNED["head_sha256"]

    scores = tmp_path / "scores.jsonl"
    assert infer.main(["--checkpoint", str(run / "best.pt"), "--manifest", str(demo_data), "--output",
                       str(scores)]) == 0
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    for row in rows:
        row["first_frame"] = os.path.basename(row["first_frame"])
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == PINNED["scores_sha256"]

    evaluation.main(["--checkpoint", str(run / "best.pt"), "--manifest", str(demo_data), "--output",
                     str(tmp_path / "eval.json")])
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {k: result[k] for k in PINNED["eval"]} == PINNED["eval"]
