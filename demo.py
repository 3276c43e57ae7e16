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
FLEET_SCENES, PLANTED, GLARE = 30, 36, 30  # the fleet: 90 clips, 36 with the red block, 30 with sun glare
BATCH = 16  # clips per review round
# the fleet's clips are few and alike under the random tiny encoder: fold only near-identical ones
SELECT_SET = ["--set", "selection.max_similarity=0.995"]


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


def drive_frame(t, look, background, rng, car=None, planted=None, glare=None):
    """One frame of a drive at time t: lane dashes moving with `look`'s speed over `background`
    (drive_background). `car` = (x, width, grey): an ordinary dark car ahead (half the clips have one);
    `planted` = (x, y, w, h): the anomaly, a large saturated red block; `glare` = (x, y, strength, peak,
    radius, tint): the boring novelty, sun glare washing the frame out towards `tint` (a near-white RGB), by
    `strength` at least and up to `peak` within ~radius pixels of (x, y)."""
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
    if glare is not None:
        gx, gy, strength, peak, radius, tint = glare
        y, x = np.mgrid[0:FRAME_SIZE[1], 0:FRAME_SIZE[0]]
        wash = strength + (peak - strength) * np.exp(-((x - gx) ** 2 + (y - gy) ** 2) / (2 * radius ** 2))
        img += (np.array(tint, np.float32) - img) * wash[:, :, None].astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * 4
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_drives(folder, name, scenes, clips_per_scene, frames, rng, planted=(), glare=()):
    """Write `scenes` drives of `clips_per_scene` clips as JPEGs plus NAME.jsonl (no split field) and
    NAME_labels.jsonl; clips whose ids are in `planted` get the red block in every frame (label 1), clips in
    `glare` sun glare (label 0: novel, but not what a reviewer wants)."""
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
                size = rng.uniform(0.4, 1.0)  # some subtle: novelty ranks those below strong glare
                pw, ph = 0.35 * w * size, 0.4 * h * size
                px, vx, py = rng.uniform(0, w - pw), rng.uniform(-6, 6), rng.uniform(0.45, 0.55) * h
            sun = (rng.uniform(0, w), rng.uniform(0, 0.4 * h), 0.0, rng.uniform(0.7, 1.0),
                   rng.uniform(25, 60),
                   [255, rng.uniform(225, 255), rng.uniform(170, 255)]) if clip_id in glare else None
            paths = []
            for f in range(frames):
                rel = f"{name}/{scene}/clip{c}_frame_{f:03d}.jpg"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                block = (px + vx * f, py, pw, ph) if clip_id in planted else None
                frame = drive_frame(c * frames + f, look, background, rng, car, block, sun)
                frame.save(folder / rel, quality=90)
                paths.append(rel)
            lines.append({"clip_id": clip_id, "scene_id": scene, "camera": "CAM_FRONT", "frame_paths": paths})
            labels.append({"clip_id": clip_id, "binary_label": int(clip_id in planted)})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / f"{name}_labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return folder / f"{name}.jsonl"


def make_demo_data(folder, seed=42, train_scenes=8, fleet_scenes=FLEET_SCENES, clips_per_scene=3,
                   frames=8, planted=PLANTED, glare=GLARE):
    """train.jsonl (ordinary drives) and fleet.jsonl + fleet_labels.jsonl (new ordinary drives, `planted`
    clips with the red block, labelled 1, and `glare` other clips with sun glare, labelled 0) under `folder`,
    all drawn from `seed`. Returns {train, fleet, labels, planted, glare}."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    train = write_drives(folder, "train", train_scenes, clips_per_scene, frames, rng)
    ids = [f"fleet_{s:02d}__CAM_FRONT__{c:03d}" for s in range(fleet_scenes) for c in range(clips_per_scene)]
    drawn = rng.choice(ids, planted + glare, replace=False).tolist()
    chosen, glared = sorted(drawn[:planted]), sorted(drawn[planted:])
    fleet = write_drives(folder, "fleet", fleet_scenes, clips_per_scene, frames, rng, set(chosen),
                         set(glared))
    return {"train": train, "fleet": fleet, "labels": folder / "fleet_labels.jsonl", "planted": chosen,
            "glare": glared}


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
                              str(data["labels"]), "--top", str(BATCH), *SELECT_SET, "--output", selection]),
            ("report.py", ["--scores", scores, "--manifest", str(data["fleet"]), "--labels",
                           str(data["labels"]), "--selection", selection, "--top", "6", "--bottom", "6",
                           "--output", str(run_dir / "report.html")])]


def verdict(ranking):
    """One line: does the trained head rank the interesting (labelled 1) clips above the no-predictor and
    random baselines? Only as far as the 95% intervals of the paired AP differences (eval.py's) say."""
    ap = {m: ranking[m]["average_precision"] for m in ("trained", "masked_gap", "random")}
    if ap["trained"] is None:
        return "verdict: no positive labels, so there is nothing to rank"
    said = {"better": "better than", "worse": "worse than", "not distinguishable": "not distinguishable from",
            "too few labels": "untested (too few labels) vs"}
    by_verdict = {}
    for b in ("random", "masked_gap"):
        by_verdict.setdefault(ranking["differences"][b]["verdict"], []).append(f"{b} ({ap[b]:.3f})")
    words = "; ".join(f"{said[v]} {' and '.join(names)}" for v, names in by_verdict.items())
    return f"verdict: the trained head's AP {ap['trained']:.3f} is {words}"


def ranks_of(scores_path, clip_ids):
    """1-based rank of each clip id in a scores file (highest score first, ties by clip_id, as report.py
    ranks)."""
    import scorefile
    from ranking import rank_order
    order = rank_order({obj["clip_id"]: scorefile.clip_dict(obj)["score"]
                        for _, _, obj in scorefile.lines(scores_path)})
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
    loop = review_loop(data, run_dir, step)
    novel = set(data["planted"]) | set(data["glare"])
    import ranking as metrics
    novel_auroc = metrics.auroc([-i for i in range(len(order))], [c in novel for c in order])
    return {"ranking": ranking, "verdict": line, "planted": data["planted"], "glare": data["glare"],
            "ranks": ranks, "order": order, "selection": sel, "loop": loop, "novel_auroc": novel_auroc}


def picked_ids(path):
    """The clip ids of a selection JSONL, in pick order."""
    return [json.loads(line)["clip_id"] for line in Path(path).read_text().splitlines() if line.strip()]


def novelty_only(scores_path, skip, top):
    """What round 2 would be by novelty alone: selection.py's own walk (the same folding and scene cap) over
    the clips not in `skip`."""
    import cli
    import scorefile
    import selection
    cfg = cli.load_config(cli.CONFIG_PATH, [SELECT_SET[1]])["selection"]
    scores = scorefile.Scores(scores_path)
    score = scores.score.copy()
    score[[i for i, c in enumerate(scores.ids) if c in skip]] = np.nan
    picks, _ = selection.greedy_select(selection.walk_order(score, scores.ids), scorefile.Embeddings(scores),
                                       scores, top, cfg["max_similarity"], cfg["per_scene"])
    return [scores.ids[r] for r in picks]


def review_loop(data, run_dir, step):
    """The reviewer loop on the fleet: round 1 is the novelty selection; the demo "reviews" it, taking the
    fleet labels of its picks only (round1_labels.jsonl, as the review page exports them), fits the probe
    (learn.py fit) and picks round 2 by `mix` among the clips not yet labelled. Returns both rounds' picks,
    what novelty alone would pick on the same remaining clips, their shares of positives and the probe's
    cross-validated AP."""
    truth = {r["clip_id"]: r["binary_label"] for r in map(json.loads, Path(data["labels"]).open())}
    round1 = picked_ids(run_dir / "selection.jsonl")
    labels1 = run_dir / "round1_labels.jsonl"
    labels1.write_text("".join(json.dumps({"clip_id": c, "binary_label": truth[c], "reviewer": "demo"}) + "\n"
                               for c in round1))
    scores, probe, round2 = run_dir / "scores.jsonl", run_dir / "probe.jsonl", run_dir / "round2.jsonl"
    if min(sum(truth[c] for c in round1), sum(1 - truth[c] for c in round1)) < 5:
        return {"round1": round1, "share_round1": share(round1, truth), "round2": None}  # learn would refuse
    step("learn.py", ["fit", "--scores", str(scores), "--labels", str(labels1), "--output", str(probe)])
    step("selection.py", ["select", "--scores", str(scores), "--manifest", str(data["fleet"]), "--labels",
                          str(labels1), "--rank-by", "mix", "--probe", str(probe), "--top", str(BATCH),
                          *SELECT_SET, "--output", str(round2)])
    picks2 = picked_ids(round2)
    alone = novelty_only(scores, set(round1), len(picks2))
    cv_ap = json.loads(Path(f"{probe}.meta.json").read_text())["cv_ap"]["probe"]
    return {"round1": round1, "round2": picks2, "novelty_only": alone, "share_round1": share(round1, truth),
            "share_round2": share(picks2, truth), "share_novelty_only": share(alone, truth), "cv_ap": cv_ap}


def loop_words(loop):
    """The demo's lines on the reviewer loop: the share of interesting clips in each round."""
    r1 = f"round 1 (by novelty): {loop['share_round1']:.0%} of {len(loop['round1'])} picks interesting"
    if loop["round2"] is None:
        return f"{r1}; too few of one kind to fit a probe (5 of each needed), so no round 2"
    return (f"{r1}\nround 2 (mix, after learning from round 1's labels; probe CV AP {loop['cv_ap']:.3f}): "
            f"{loop['share_round2']:.0%} of {len(loop['round2'])} picks interesting, where novelty alone "
            f"would pick {loop['share_novelty_only']:.0%} on the same remaining clips")


def share(ids, truth):
    """The share of interesting (label 1) clips among `ids`."""
    return sum(truth[c] for c in ids) / max(len(ids), 1)


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
    n, glare = len(found["order"]), set(found["glare"])
    print("\n5 most novel clips of fleet.jsonl (planted = has the red block, glare = sun glare):")
    for rank, clip_id in enumerate(found["order"][:5], 1):
        kind = "planted" if clip_id in found["ranks"] else "glare" if clip_id in glare else "ordinary"
        print(f"  {rank}. {clip_id}  ({kind})")
    print(f"novelty ranks the {len(found['ranks']) + len(glare)} novel clips (planted and glare) above the "
          f"ordinary ones with AUROC {found['novel_auroc']:.3f}, but cannot tell the kinds apart:\n"
          f"{found['verdict']}")
    print(loop_words(found["loop"]))
    print(f"\noutputs in {run_dir}/:\n  best.pt, metrics.jsonl, eval.json, scores.jsonl (+ .emb.npy), "
          f"selection.jsonl/.csv (round 1: {selection_words(found['selection'])}), report.html (the "
          f"selection first, then top 6 and bottom 6), round1_labels.jsonl, probe.jsonl (+ .probe.npz, "
          f".meta.json), round2.jsonl/.csv; done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
