"""End-to-end demo on this machine: no network, no GPU, under 3 minutes on 2 CPU cores.

Usage:
  python demo.py [--seed 42] [--epochs 8]   # or: make demo [SEED=42] [EPOCHS=8]
  python demo.py --data-only                 # only write data/demo (synthetic clips, labels, tiny encoder)

It writes synthetic dashcam-like clips to data/demo/:
- train.jsonl: ordinary drives only (8 scenes x 3 clips x 8 frames), as a fleet's data is mostly ordinary;
- fleet.jsonl: a held-out set of 6 new ordinary scenes x 3 clips; in 3 of them a large saturated red block
  (a third of the frame's width) sits in the lower half of every frame (all 4 tubelets): binary_label 1 in
  fleet_labels.jsonl, 0 for the others;
- tiny-vjepa2/: a tiny randomly initialised V-JEPA 2, saved with save_pretrained.
Then it runs the real commands into experiments/demo/: train.py on train.jsonl, eval.py on fleet.jsonl with
the labels (the trained head against the masked_gap and random baselines, and a one-line verdict), infer.py,
selection.py select (a diverse top 6, near-duplicates folded) and report.py (with the labels and the
selection) on fleet.jsonl, and prints the 5 most novel clips and where the planted ones rank.

What it shows: the pipeline runs end to end, and a head trained on ordinary clips scores clips whose
embeddings leave that distribution as more novel. What it does not show: anything about real footage. The
encoder is random and the planted objects are big, saturated and never seen in training, which any change
detector finds.
"""
import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def make_tiny_encoder(folder, seed=0):
    """A randomly initialised V-JEPA 2 small enough for CPU tests, saved like a hub snapshot (model +
    processor)."""
    import torch
    from transformers import VJEPA2Config, VJEPA2Model, VJEPA2VideoProcessor
    torch.manual_seed(seed)
    config = VJEPA2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, crop_size=64,
                          frames_per_clip=16, pred_hidden_size=32, pred_num_hidden_layers=1,
                          pred_num_attention_heads=4, num_pooler_layers=1)
    VJEPA2Model(config).save_pretrained(folder)
    VJEPA2VideoProcessor(crop_size=64).save_pretrained(folder)
    return Path(folder)


def road_frame(t, speed, tint, odd=None, size=(320, 180)):
    """A dashcam-like frame: sky, road, lane dashes moving with time t; `odd` = (x) of a red object
    crossing."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    sky = y < h * 0.45
    img[sky] = np.array([110, 160, 220]) * (0.7 + 0.3 * (1 - y[sky] / (h * 0.45)))[:, None] + tint
    img[~sky] = np.array([70, 130, 60]) + tint  # verge
    horizon, half = h * 0.45, (y - h * 0.45) / (h * 0.55) * w * 0.45
    road = (~sky) & (np.abs(x - w / 2) < half + 4)
    img[road] = 95 + tint
    dash = road & (np.abs(x - w / 2) < 1 + half * 0.03) & (((y - horizon) * 0.3 + t * speed) % 12 < 6)
    img[dash] = 235
    if odd is not None:
        ox = int(odd)
        img[int(h * 0.55):int(h * 0.8), max(ox, 0):max(ox + 40, 0)] = [220, 30, 30]
    noise = np.random.default_rng(int(t * 1000 + speed * 7 + tint)).normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8))


def make_clips(folder, scenes=5, clips_per_scene=3, frames=8, novel=("scene_2", "scene_4")):
    """Write synthetic clips as JPEGs plus manifest.jsonl (no split: train.py draws one) and labels.jsonl."""
    folder = Path(folder)
    lines, labels = [], []
    for s in range(scenes):
        scene = f"scene_{s}"
        speed, tint = 1.0 + s * 0.6, (s * 9) % 30
        for c in range(clips_per_scene):
            odd = scene in novel and c == clips_per_scene - 1
            paths = []
            for f in range(frames):
                rel = f"frames/{scene}/clip{c}_frame_{f:03d}.jpg"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                t = c * frames + f
                road_frame(t, speed, tint, odd=(f * 30 - 20) if odd else None).save(folder / rel, quality=90)
                paths.append(rel)
            clip_id = f"{scene}__CAM_FRONT__{c:03d}"
            lines.append({"clip_id": clip_id, "scene_id": scene, "camera": "CAM_FRONT", "frame_paths": paths,
                          "timestamps": [(c * frames + f) * 100000 for f in range(frames)]})
            labels.append({"clip_id": clip_id, "binary_label": int(odd)})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return folder / "manifest.jsonl"


# ---- the demo's data: ordinary drives to train on, a held-out set with planted anomalies ----

FRAME_SIZE = (320, 180)


def scene_look(rng):
    """Random but ordinary looks of one drive: horizon, sky brightness, verge and asphalt colour, road width,
    speed."""
    light = rng.uniform(0.8, 1.2)
    return {"horizon": rng.uniform(0.38, 0.5), "sky": [110 * light, 160 * light, 220 * light],
            "verge": [70 + rng.uniform(-15, 15), 130 + rng.uniform(-20, 20), 60],
            "road": rng.uniform(0.35, 0.5), "asphalt": rng.uniform(80, 110), "speed": rng.uniform(1, 4)}


def drive_background(look):
    """(sky, verge and road of one drive as a float image, road mask, lane-centre mask, height below
    horizon)."""
    w, h = FRAME_SIZE
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    horizon = h * look["horizon"]
    sky = y < horizon
    img[sky] = np.array(look["sky"]) * (0.7 + 0.3 * (1 - y[sky] / horizon))[:, None]
    img[~sky] = look["verge"]
    half = (y - horizon) / (h - horizon) * w * look["road"]
    road = (~sky) & (np.abs(x - w / 2) < half + 4)
    img[road] = look["asphalt"]
    return img, road & (np.abs(x - w / 2) < 1 + half * 0.03), (y - horizon) * 0.3, horizon


def drive_frame(t, look, background, rng, car=None, planted=None):
    """One frame of a drive at time t: lane dashes moving with `look`'s speed over `background`
    (drive_background). `car` = (x, width, grey): an ordinary dark car ahead (half the clips have one);
    `planted` = (x, y, w, h): the anomaly, a large saturated red block."""
    base, centre, depth, horizon = background
    img = base.copy()
    img[centre & ((depth + t * look["speed"]) % 12 < 6)] = 235
    if car is not None:
        cx, cw, grey = car
        cy = horizon + (FRAME_SIZE[1] - horizon) * 0.35
        img[int(cy):int(cy + cw * 0.6), int(cx):int(cx + cw)] = grey
    if planted is not None:
        px, py, pw, ph = planted
        img[int(py):int(py + ph), max(int(px), 0):max(int(px + pw), 0)] = [230, 20, 20]
    img += rng.standard_normal(img.shape, dtype=np.float32) * 4
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_drives(folder, name, scenes, clips_per_scene, frames, rng, planted=()):
    """Write `scenes` drives of `clips_per_scene` clips as JPEGs plus NAME.jsonl (no split field) and
    NAME_labels.jsonl; clips whose ids are in `planted` get the red block in every frame."""
    lines, labels = [], []
    w, h = FRAME_SIZE
    for s in range(scenes):
        look, scene = scene_look(rng), f"{name}_{s:02d}"
        background = drive_background(look)
        for c in range(clips_per_scene):
            clip_id = f"{scene}__CAM_FRONT__{c:03d}"
            car = (w / 2 - 15 + rng.uniform(-30, 30), rng.uniform(20, 40), rng.uniform(20, 70)) \
                if rng.random() < 0.5 else None
            if clip_id in planted:  # ~35% x 40% of the frame, drifting a few pixels per frame
                pw, ph = 0.35 * w, 0.4 * h
                px, vx, py = rng.uniform(0, w - pw), rng.uniform(-6, 6), rng.uniform(0.45, 0.55) * h
            paths = []
            for f in range(frames):
                rel = f"{name}/{scene}/clip{c}_frame_{f:03d}.jpg"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                block = (px + vx * f, py, pw, ph) if clip_id in planted else None
                drive_frame(c * frames + f, look, background, rng, car, block).save(folder / rel, quality=90)
                paths.append(rel)
            lines.append({"clip_id": clip_id, "scene_id": scene, "camera": "CAM_FRONT", "frame_paths": paths})
            labels.append({"clip_id": clip_id, "binary_label": int(clip_id in planted)})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / f"{name}_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return folder / f"{name}.jsonl"


def make_demo_data(folder, seed=42, train_scenes=8, fleet_scenes=6, clips_per_scene=3, frames=8, planted=3):
    """train.jsonl (ordinary drives) and fleet.jsonl + fleet_labels.jsonl (new ordinary drives, `planted`
    clips with the red block) under `folder`, all drawn from `seed`. Returns {train, fleet, labels,
    planted}."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    train = write_drives(folder, "train", train_scenes, clips_per_scene, frames, rng)
    ids = [f"fleet_{s:02d}__CAM_FRONT__{c:03d}" for s in range(fleet_scenes) for c in range(clips_per_scene)]
    chosen = sorted(rng.choice(ids, planted, replace=False).tolist())
    fleet = write_drives(folder, "fleet", fleet_scenes, clips_per_scene, frames, rng, set(chosen))
    return {"train": train, "fleet": fleet, "labels": folder / "fleet_labels.jsonl", "planted": chosen}


# ---- running it ----

def run_subprocess(script, args):
    """Run an entry script as a user would; exit with its status when it fails. One CPU thread unless
    OMP_NUM_THREADS says otherwise: the tiny encoder's ops are too small for threads to pay off, and on a busy
    machine several threads made each encoder call an order of magnitude slower."""
    print("$ python " + " ".join([script, *args]), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if subprocess.run([sys.executable, script, *args], cwd=HERE, env=env).returncode != 0:
        sys.exit(f"demo: step {script} failed (see its message above)")


def run_in_process(script, args):
    """The same step in this process (tests: no interpreter start-up per step); raises on failure."""
    print("$ python " + " ".join([script, *args]), flush=True)
    module, saved = importlib.import_module(script[:-3]), sys.argv
    sys.argv = [script, *args]
    try:
        module.main()
    finally:
        sys.argv = saved


def steps(data, run_dir, encoder, seed, epochs):
    """(script, arguments) of the demo's commands, in order."""
    enc, ckpt, scores = ["--encoder", str(encoder)], str(run_dir / "best.pt"), str(run_dir / "scores.jsonl")
    selection = str(run_dir / "selection.jsonl")
    return [("train.py", ["--manifest", str(data["train"]), "--run-dir", str(run_dir), "--epochs",
                          str(epochs), "--seed", str(seed), *enc]),
            ("eval.py", ["--checkpoint", ckpt, "--manifest", str(data["fleet"]), "--labels",
                         str(data["labels"]), "--output", str(run_dir / "eval.json"), *enc]),
            ("infer.py", ["--checkpoint", ckpt, "--manifest", str(data["fleet"]), "--output", scores, *enc]),
            ("selection.py", ["select", "--scores", scores, "--manifest", str(data["fleet"]), "--labels",
                              str(data["labels"]), "--top", "6", "--output", selection]),
            ("report.py", ["--scores", scores, "--manifest", str(data["fleet"]), "--labels",
                           str(data["labels"]), "--selection", selection, "--top", "6", "--bottom", "6",
                           "--output", str(run_dir / "report.html")])]


def verdict(ranking):
    """One line: does the trained head rank the labelled clips above the no-predictor and random baselines?"""
    ap = {m: ranking[m]["average_precision"] for m in ("trained", "masked_gap", "random")}
    if ap["trained"] is None:
        return "verdict: no positive labels, so there is nothing to rank"
    t, g, r = ap["trained"], ap["masked_gap"], ap["random"]
    if t > g and t > r:
        return ("verdict: the trained head ranks the planted clips best "
                f"(AP {t:.3f}; masked_gap {g:.3f}, random {r:.3f})")
    if t > r:
        return (f"verdict: the trained head beats random (AP {t:.3f} vs {r:.3f}) but not masked_gap "
                f"({g:.3f}): training did not help")
    return (f"verdict: the trained head is no better than random (AP {t:.3f} vs {r:.3f}): "
            "it missed the planted clips")


def ranks_of(scores_path, clip_ids):
    """1-based rank of each clip id in a scores file (highest score first, ties by clip_id, as report.py
    ranks)."""
    from eval import rank_order
    rows = [json.loads(line) for line in Path(scores_path).read_text().splitlines() if line.strip()]
    order = rank_order({r["clip_id"]: r["score"] for r in rows})
    return {c: order.index(c) + 1 for c in clip_ids}, order


def run_demo(data_dir, run_dir, seed=42, epochs=8, step=run_subprocess):
    """The whole demo into data_dir and run_dir (both rebuilt); returns what it found:
    {"ranking", "verdict", "planted", "ranks" (planted clip -> rank), "order" (clip ids, most novel
    first)}."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    shutil.rmtree(data_dir, ignore_errors=True)  # the demo owns these two folders and rebuilds them each time
    shutil.rmtree(run_dir, ignore_errors=True)
    data = make_demo_data(data_dir, seed)
    encoder = make_tiny_encoder(data_dir / "tiny-vjepa2", seed)
    print(f"wrote to {data_dir}/: train.jsonl (ordinary drives), fleet.jsonl ({len(data['planted'])} planted "
          f"clips, listed in fleet_labels.jsonl) and tiny-vjepa2/ (random weights)", flush=True)
    commands = steps(data, run_dir, encoder, seed, epochs)
    for script, args in commands[:2]:  # train, eval
        step(script, args)
    ranking = json.loads((run_dir / "eval.json").read_text())["ranking"]
    line = verdict(ranking)
    print(line, flush=True)
    # infer, select (a diverse top 6), report (with the selection and labels)
    for script, args in commands[2:]:
        step(script, args)
    ranks, order = ranks_of(run_dir / "scores.jsonl", data["planted"])
    sel = json.loads((run_dir / "selection.jsonl.meta.json").read_text())
    return {"ranking": ranking, "verdict": line, "planted": data["planted"], "ranks": ranks, "order": order,
            "selection": sel}


def selection_words(sel):
    """The demo's words for its selection: says when fewer than TOP were picked, and why."""
    if sel["picked"] >= sel["top"]:
        return f"a diverse top {sel['top']}"
    return (f"{sel['picked']} picks, not {sel['top']}: the batch ran out of distinct clips, the other "
            f"{sel['scored'] - sel['picked']} being near-duplicates of a pick ({sel['near_duplicate']}) or "
            f"over the scene quota ({sel['scene_quota']}), so the last picks score low")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-only", action="store_true",
                   help="only write data/demo (clips, labels, encoder), run nothing")
    p.add_argument("--epochs", type=int, default=8, help="training epochs for the demo run")
    p.add_argument("--seed", type=int, help="seed of the synthetic data, the tiny encoder and training "
                                            "(default: seed in config.yaml)")
    args = p.parse_args()
    if args.seed is None:
        import yaml
        args.seed = yaml.safe_load((HERE / "config.yaml").read_text())["seed"]
    data_dir, run_dir = HERE / "data/demo", HERE / "experiments/demo"
    t0 = time.time()
    if args.data_only:
        shutil.rmtree(data_dir, ignore_errors=True)
        data = make_demo_data(data_dir, args.seed)
        make_tiny_encoder(data_dir / "tiny-vjepa2", args.seed)
        print(f"wrote {data['train']}, {data['fleet']}, {data['labels']} and {data_dir / 'tiny-vjepa2'}")
        return
    found = run_demo(data_dir, run_dir, args.seed, args.epochs)
    ranks, n = found["ranks"], len(found["order"])
    print("\n5 most novel clips of fleet.jsonl (planted = has the red block):")
    for rank, clip_id in enumerate(found["order"][:5], 1):
        print(f"  {rank}. {clip_id}" + ("  (planted)" if clip_id in ranks else ""))
    print(f"the planted clips rank {', '.join(str(r) for r in sorted(ranks.values()))} of "
          f"{n}\n{found['verdict']}")
    print(f"\noutputs in {run_dir}/:\n  best.pt, metrics.jsonl, eval.json, scores.jsonl (+ .emb.npy), "
          f"selection.jsonl/.csv ({selection_words(found['selection'])}), report.html (the selection "
          f"first, then top 6 and bottom 6); done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
