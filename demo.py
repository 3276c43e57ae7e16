"""End-to-end demo on this machine: no network, no GPU, under 3 minutes on 2 CPU cores.

Usage:
  python demo.py                 # or: make demo
  python demo.py --data-only     # only write data/demo (synthetic clips, labels, tiny encoder)

It writes synthetic driving-like clips to data/demo/ (a few of them with an odd object crossing the road,
labelled 1 in labels.jsonl), saves a tiny randomly initialised V-JEPA 2 there with save_pretrained, then runs
the real commands (train.py, eval.py, infer.py, report.py) on them into experiments/demo/ and prints the 5 most
novel clips. The tiny random encoder shows the plumbing works; its scores mean nothing about real footage.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def make_tiny_encoder(folder, seed=0):
    """A randomly initialised V-JEPA 2 small enough for CPU tests, saved like a hub snapshot (model + processor)."""
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
    """A dashcam-like frame: sky, road, lane dashes moving with time t; `odd` = (x) of a red object crossing."""
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


def run(cmd):
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run([sys.executable, *cmd], cwd=HERE).returncode != 0:
        sys.exit(f"demo: step {cmd[0]} failed (see its message above)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-only", action="store_true", help="only write data/demo, run nothing")
    p.add_argument("--epochs", type=int, default=8, help="training epochs for the demo run")
    args = p.parse_args()
    data, run_dir = HERE / "data/demo", HERE / "experiments/demo"
    shutil.rmtree(data, ignore_errors=True)  # the demo owns these two folders and rebuilds them each time
    shutil.rmtree(run_dir, ignore_errors=True)
    manifest = make_clips(data)
    encoder = make_tiny_encoder(data / "tiny-vjepa2")
    print(f"wrote {manifest}, {data / 'labels.jsonl'} and a tiny random V-JEPA 2 in {encoder}")
    if args.data_only:
        return
    enc = ["--encoder", str(encoder)]
    run(["train.py", "--manifest", str(manifest), "--run-dir", str(run_dir), "--epochs", str(args.epochs), *enc])
    run(["eval.py", "--checkpoint", str(run_dir / "best.pt"), "--manifest", str(manifest), *enc,
         "--labels", str(data / "labels.jsonl"), "--output", str(run_dir / "eval.json")])
    scores = run_dir / "scores.jsonl"
    run(["infer.py", "--checkpoint", str(run_dir / "best.pt"), "--manifest", str(manifest), *enc,
         "--output", str(scores)])
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    top = sorted((r for r in rows if r["score"] is not None), key=lambda r: -r["score"])[:5]
    print("\n5 most novel clips:")
    for rank, r in enumerate(top, 1):
        print(f"  {rank}. {r['score']:.4f}  {r['clip_id']}")
    if (HERE / "report.py").exists():
        run(["report.py", "--scores", str(scores), "--manifest", str(manifest), "--output",
             str(run_dir / "report.html")])
    print(f"\noutputs: checkpoints, metrics.jsonl and config.yaml in {run_dir}/; eval {run_dir / 'eval.json'}; "
          f"scores {scores}" + (f"; report {run_dir / 'report.html'}" if (run_dir / "report.html").exists() else ""))


if __name__ == "__main__":
    main()
