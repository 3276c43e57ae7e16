"""Throughput and memory benchmark: prints ratios measured in one run and writes BENCHMARKS.md.

Usage:
  python bench.py [--quick] [--device auto|cpu|cuda] [--json bench.json] [--markdown BENCHMARKS.md]
  make bench [BENCH_ARGS=--quick]

Measures (same batch size throughout): gemm (fp32 GFLOP/s of a large matmul, the practical ceiling), encoder
(get_vision_features of a ViT-L-sized V-JEPA 2 with random weights on ready tensors), pipeline (infer.py's real
path on generated 1600x900 JPEGs), naive (the research notebook's one-tubelet-at-a-time loop), train (train.py
wall time vs its encoding stage), memory (peak RSS scoring 10,000 vs 100 clips, tiny encoder) and decode (loader
frames/s). Ratios, not absolute times, are what to compare: this machine is noisy.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import demo
import infer
import jepa
from manifest import read_manifest
import train

HERE = Path(__file__).resolve().parent


def vit_l_flops(config, videos):
    """Forward FLOPs of the V-JEPA 2 encoder: patch embedding + L x (QKV/proj/MLP matmuls + attention)."""
    n = (config.crop_size // config.patch_size) ** 2 * (2 // config.tubelet_size)
    d, layers = config.hidden_size, config.num_hidden_layers
    per_video = 2 * n * d * 3 * config.tubelet_size * config.patch_size ** 2 + layers * (
        2 * n * d * d * (4 + 2 * config.mlp_ratio) + 4 * n * n * d)
    return per_video * videos


def bench_gemm(size, device):
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 3:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * reps / (time.perf_counter() - t0) / 1e9


def bench_encoder(encoder, batch, reps):
    """Tubelets/s (each tubelet = a clean + a masked video, as the pipeline encodes them) and GFLOP/s."""
    crop = encoder.model.config.crop_size
    pix = torch.randn(2 * batch, 2, 3, crop, crop)
    encoder(pix)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        encoder(pix)
    secs = time.perf_counter() - t0
    return batch * reps / secs, vit_l_flops(encoder.model.config, 2 * batch * reps) / secs / 1e9


def make_manifest(folder, clips, frames, size=(1600, 900), distinct=None):
    """Clips of `frames` JPEG frames; `distinct` caps how many different files exist (reused across clips)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_files = min(distinct or clips * frames, clips * frames)
    for i in range(n_files):
        path = folder / f"f{i:05d}.jpg"
        if not path.exists():
            demo.road_frame(i, 1.5, 10, size=size).save(path, quality=90)
    rows = [{"clip_id": f"c{c:05d}", "scene_id": f"s{c % 7}", "camera": "CAM_FRONT",
             "frame_paths": [f"f{(c * frames + f) % n_files:05d}.jpg" for f in range(frames)]} for c in range(clips)]
    manifest = folder / f"manifest_{clips}x{frames}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def head_checkpoint(path, encoder, cfg):
    head = jepa.PredictorHead(encoder.embed_dim, cfg["model"]["predictor_hidden_dim"])
    jepa.save_checkpoint(path, head, None, 0, cfg, None, encoder_name=encoder.name,
                         encoder_fingerprint=encoder.fingerprint, embed_dim=encoder.embed_dim)
    return path


def bench_naive(encoder, head, manifest, cfg, limit):
    """The research notebook's loop: one tubelet at a time, processor per tubelet, no batching or workers."""
    d = cfg["data"]
    masker = jepa.MaskTubelet(d["mask_ratio"], d["patch_size"], cfg["seed"])
    done, t0 = 0, time.perf_counter()
    for rec in read_manifest(manifest):
        for k in range(len(rec["frames"]) // 2):
            tub = np.stack([jepa.load_frame(f, d["image_size"]) for f in rec["frames"][2 * k:2 * k + 2]])
            masked, mask = masker(tub, rec["clip_id"], k)
            clean_emb = encoder(encoder.process(torch.from_numpy(tub).permute(0, 3, 1, 2)[None]))
            masked_emb = encoder(encoder.process(torch.from_numpy(masked).permute(0, 3, 1, 2)[None]))
            jepa.tubelet_cosines(head, clean_emb, masked_emb, torch.tensor([mask.mean()], dtype=torch.float32))
            done += 1
            if done == limit:
                return done / (time.perf_counter() - t0)
    return done / (time.perf_counter() - t0)


def peak_rss_mb(args):
    """Peak RSS (MB) of an infer.py subprocess: the memory test runs each size in a fresh process."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (which holds a ViT-L here)
    code = ("import re, sys, infer; infer.main(sys.argv[1:]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=HERE, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return int(out.stdout.split()[-1]) / 1024


# ---- fleet scale (issues 11 and 12): bench.py --only fleet ----

def run_measured(code_args):
    """(peak RSS MB, wall s) of `python -c CODE ARGS...` in a fresh process (VmHWM printed by the code)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", *code_args], cwd=HERE, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(out.stderr[-2000:])
    return int(out.stdout.split()[-1]) / 1024, wall


INFER = ("import re, sys, infer; infer.main(sys.argv[1:]); "
         "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")


def fleet_manifest(path, clips, frames, frame_files):
    """`clips` lines of `frames` frames each, cycling over a few real JPEGs (paths relative to `path`)."""
    with open(path, "w") as f:
        for c in range(clips):
            paths = [frame_files[(c + k) % len(frame_files)] for k in range(frames)]
            f.write(json.dumps({"clip_id": f"drive_{c // 1000:05d}__CAM_FRONT__{c % 1000:03d}",
                                "scene_id": f"drive_{c // 1000:05d}", "camera": "CAM_FRONT",
                                "frame_paths": paths}) + "\n")
    return path


def fake_shards(folder, manifest, shards, dim):
    """Shard outputs as infer.py --shard i/N writes them (lines, .emb.npy, .meta.json), without encoding."""
    rows = [[] for _ in range(shards)]
    with open(manifest) as f:
        for k, line in enumerate(f):
            rows[k % shards].append(json.loads(line)["clip_id"])
    paths = []
    for i, ids in enumerate(rows):
        out = folder / f"shard-{i:03d}.jsonl"
        out.write_text("".join(json.dumps({"clip_id": c, "scene": "s", "camera": "CAM_FRONT", "first_frame": "f",
                                           "score": 0.5, "tubelet_scores": [0.5]}) + "\n" for c in ids))
        np.save(f"{out}.emb.npy", np.zeros((len(ids), dim), dtype="<f4"))
        Path(f"{out}.meta.json").write_text(json.dumps({"embed_dim": dim, "shard": f"{i}/{shards}"}))
        paths.append(out)
        rows[i] = None
    return paths


def bench_fleet(work, tiny, tiny_ckpt, q):
    """memory/startup of a 1M-line manifest vs a 100-line one (100 clips scored each), merge of 100 shards, and
    the RSS of one 1024-frame clip vs one 16-frame clip (num_workers=0)."""
    res, big = {}, 100_000 if q else 1_000_000
    real = HERE.parent / "shared" / "realdata" / "frames"
    folder = work / "fleet"
    folder.mkdir()
    files = sorted(real.rglob("*.jpg"))[:16] if real.is_dir() else []
    if not files:
        files = [folder / p for p in json.loads(make_manifest(folder, 1, 16, size=(1280, 720)).read_text()
                                                .splitlines()[0])["frame_paths"]]
    files = [os.path.relpath(f, folder) for f in files]
    base = ["--checkpoint", str(tiny_ckpt), "--device", "cpu", "--set", "data.num_workers=1"]
    small = fleet_manifest(folder / "m100.jsonl", 100, 16, files)
    large = fleet_manifest(folder / f"m{big}.jsonl", big, 16, files)
    for name, manifest, shard in (("100", small, []), ("big", large, ["--shard", f"0/{big // 100}"])):
        res[f"fleet_{name}_mb"], res[f"fleet_{name}_s"] = run_measured(
            [INFER, *base, "--manifest", str(manifest), "--output", str(folder / f"s-{name}.jsonl"), *shard])
        print(f"fleet {name}: {res[f'fleet_{name}_mb']:.0f} MB, {res[f'fleet_{name}_s']:.1f}s", flush=True)
    t0 = time.perf_counter()
    shards = fake_shards(folder, large, 100, jepa.VJEPAEncoder(str(tiny)).embed_dim)
    print(f"wrote 100 shards in {time.perf_counter() - t0:.0f}s", flush=True)
    res["merge_mb"], res["merge_s"] = run_measured(
        [INFER, "--merge", *map(str, shards), "--manifest", str(large), "--output", str(folder / "merged.jsonl")])
    print(f"merge: {res['merge_mb']:.0f} MB, {res['merge_s']:.1f}s", flush=True)
    frames = [f for f in make_manifest(work / "long", 1, 16).read_text().split('"') if f.endswith(".jpg")]
    for n in (16, 1024):
        m = work / "long" / f"clip{n}.jsonl"
        m.write_text(json.dumps({"clip_id": f"drive{n}", "frame_paths": (frames * 64)[:n]}) + "\n")
        res[f"clip_{n}_mb"], _ = run_measured([INFER, "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--set",
                                               "data.num_workers=0", "--manifest", str(m), "--output",
                                               str(work / "long" / f"s{n}.jsonl")])
        print(f"one {n}-frame clip: {res[f'clip_{n}_mb']:.0f} MB", flush=True)
    res.update(memory_1m_over_100=res["fleet_big_mb"] / res["fleet_100_mb"],
               startup_1m_over_100=res["fleet_big_s"] / res["fleet_100_s"],
               clip_1024_over_16=res["clip_1024_mb"] / res["clip_16_mb"], fleet_lines=big)
    return res


def fleet_table(r):
    n = f"{r['fleet_lines'] // 1000}k" if r["fleet_lines"] < 1_000_000 else "1m"
    rows = [(f"memory {n}", f"{r['fleet_big_mb']:.0f} MB ({n} lines, 100 scored) vs {r['fleet_100_mb']:.0f} MB (100)",
             f"memory_{n}_over_100 {r['memory_1m_over_100']:.2f}", "<= 1.10"),
            (f"startup {n}", f"{r['fleet_big_s']:.1f}s vs {r['fleet_100_s']:.1f}s",
             f"startup_{n}_over_100 {r['startup_1m_over_100']:.2f}", "<= 1.5"),
            ("merge", f"100 shards, {r['fleet_lines']} clips: {r['merge_mb']:.0f} MB, {r['merge_s']:.1f}s",
             "peak RSS", "< 300 MB"),
            ("long clip", f"{r['clip_1024_mb']:.0f} MB (1024 frames) vs {r['clip_16_mb']:.0f} MB (16)",
             f"clip_1024_over_16 {r['clip_1024_over_16']:.2f}", "<= 1.2")]
    return "\n".join([f"{'what':<13} {'measured':<58} {'ratio':<26} target"] +
                     [f"{a:<13} {b:<58} {c:<26} {d}" for a, b, c, d in rows])


def write_section(md, title, body):
    """Replace (or append) the `## title` section of a Markdown file, keeping the rest as it is."""
    text = Path(md).read_text() if Path(md).exists() else "# Benchmarks\n"
    start = text.find(f"\n## {title}\n")
    end = text.find("\n## ", start + 1) if start >= 0 else -1
    section = f"\n## {title}\n\n{body.strip()}\n"
    text = (text[:start] + section + (text[end:] if end >= 0 else "")) if start >= 0 else text.rstrip() + "\n" + section
    Path(md).write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes: under two minutes on 2 CPU cores")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", help="also write the figures and ratios to this JSON file")
    p.add_argument("--markdown", default=None, help="Markdown report (default BENCHMARKS.md; none with --quick)")
    args = p.parse_args()
    device = jepa.resolve_device(args.device)
    q = args.quick
    batch = 2 if q else 8  # tubelets per encoder call everywhere (evaluation.batch_size)
    clips, frames = (1, 4) if q else (6, 16)
    res = {"device": str(device), "batch_tubelets": batch, "quick": q, "cpus": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__}
    work = Path(tempfile.mkdtemp(prefix="jepa-bench-"))
    print(f"working in {work}", flush=True)
    res["gemm_gflops"] = bench_gemm(2048 if q else 4096, device)
    print(f"gemm {res['gemm_gflops']:.0f} GFLOP/s", flush=True)

    from transformers import VJEPA2Config, VJEPA2Model, VJEPA2VideoProcessor
    vit_dir = work / "vit-l-random"
    VJEPA2Model(VJEPA2Config()).save_pretrained(vit_dir)  # the default config = ViT-L, real FLOPs, random weights
    VJEPA2VideoProcessor().save_pretrained(vit_dir)
    encoder = jepa.VJEPAEncoder(str(vit_dir), device)
    res["encoder_tubelets_s"], res["encoder_gflops"] = bench_encoder(encoder, batch, 1 if q else 3)
    print(f"encoder {res['encoder_tubelets_s']:.3f} tubelets/s, {res['encoder_gflops']:.0f} GFLOP/s", flush=True)

    manifest = make_manifest(work / "frames", clips, frames)
    cfg = jepa.load_config(None, [f"evaluation.batch_size={batch}", f"training.encode_batch_size={batch}"],
                           encoder=str(vit_dir))
    ckpt = head_checkpoint(work / "head.pt", encoder, cfg)
    t0 = time.perf_counter()
    infer.main(["--checkpoint", str(ckpt), "--manifest", str(manifest), "--output", str(work / "scores.jsonl"),
                "--device", args.device])
    res["pipeline_tubelets_s"] = clips * (frames // 2) / (time.perf_counter() - t0)
    print(f"pipeline {res['pipeline_tubelets_s']:.3f} tubelets/s", flush=True)
    res["naive_tubelets_s"] = bench_naive(encoder, jepa.head_from_checkpoint(jepa.load_checkpoint(ckpt), ckpt, device),
                                          manifest, cfg, 2 if q else 8)
    print(f"naive {res['naive_tubelets_s']:.3f} tubelets/s", flush=True)

    workers = jepa.num_workers(cfg, device)
    loader = jepa.make_loader(jepa.JEPADataset(read_manifest(manifest), cfg, encoder.processor), workers)
    t0 = time.perf_counter()
    n_frames = sum(len(item.mask_frac) * 2 for item in loader)
    res["decode_frames_s"] = n_frames / (time.perf_counter() - t0)
    print(f"decode {res['decode_frames_s']:.1f} frames/s ({workers} workers)", flush=True)
    del encoder

    run_dir = work / "train-run"
    t0 = time.perf_counter()
    train.main(["--manifest", str(manifest), "--encoder", str(vit_dir), "--run-dir", str(run_dir), "--epochs", "30",
                "--device", args.device, "--set", f"training.encode_batch_size={batch}"])
    res["train_total_s"] = time.perf_counter() - t0
    res["train_encoding_s"] = json.loads((run_dir / "timing.json").read_text())["encode_s"]
    print(f"train {res['train_total_s']:.1f}s total, {res['train_encoding_s']:.1f}s encoding", flush=True)

    tiny = demo.make_tiny_encoder(work / "tiny")
    tiny_enc = jepa.VJEPAEncoder(str(tiny))
    tiny_ckpt = head_checkpoint(work / "tiny-head.pt", tiny_enc, jepa.load_config(None, encoder=str(tiny)))
    big_n = 1000 if q else 10000
    for n in (100, big_n):
        m = make_manifest(work / "mem", n, 2, size=(320, 180), distinct=64)
        res[f"memory_{n}_mb"] = peak_rss_mb(["--checkpoint", tiny_ckpt, "--manifest", m, "--device", "cpu",
                                             "--output", work / f"mem-{n}.jsonl"])
        print(f"memory {n} clips: peak RSS {res[f'memory_{n}_mb']:.0f} MB", flush=True)

    res["encoder_over_gemm"] = res["encoder_gflops"] / res["gemm_gflops"]
    res["pipeline_over_encoder"] = res["pipeline_tubelets_s"] / res["encoder_tubelets_s"]
    res["pipeline_over_naive"] = res["pipeline_tubelets_s"] / res["naive_tubelets_s"]
    res["train_total_over_encoding"] = res["train_total_s"] / res["train_encoding_s"]
    res["memory_10k_over_100"] = res[f"memory_{big_n}_mb"] / res["memory_100_mb"]
    table = report_table(res, big_n)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    md = args.markdown or (None if q else "BENCHMARKS.md")
    if md:  # the figures are rewritten; the hand-written "How to read it" part is kept
        old = Path(md).read_text() if Path(md).exists() else ""
        notes = old[old.index("## How to read it"):] if "## How to read it" in old else ""
        checks = {"encoder/gemm": res["encoder_over_gemm"] >= 0.65, "pipeline/encoder": res["pipeline_over_encoder"]
                  >= 0.90, "pipeline/naive": res["pipeline_over_naive"] >= 1.0,
                  "train total/encoding": res["train_total_over_encoding"] <= 1.15,
                  "memory": res["memory_10k_over_100"] <= 1.10}
        missed = [k for k, ok in checks.items() if not ok]
        verdict = (f"Targets met in this run: all 5 ({', '.join(checks)})." if not missed else
                   f"Targets MISSED in this run: {', '.join(missed)} (see the notes below).")
        Path(md).write_text(f"# Benchmarks\n\n`python bench.py{' --quick' if q else ''}` on {res['date']}, "
                            f"{res['machine']}, {res['cpus']} CPUs, {res['torch_threads']} torch threads, device "
                            f"{res['device']}, torch {res['torch']}, batch {batch} tubelets.\n\n```\n{table}\n```\n\n"
                            f"{verdict}\nShard-merged output equal to a single run is asserted in "
                            f"`tests/test_scale.py` (byte for byte).\n\n{notes}")
        print(f"wrote {md}")


def report_table(r, big_n):
    rows = [("gemm", f"{r['gemm_gflops']:.0f} GFLOP/s", "", ""),
            ("encoder", f"{r['encoder_tubelets_s']:.3f} tubelets/s, {r['encoder_gflops']:.0f} GFLOP/s",
             f"encoder/gemm {r['encoder_over_gemm']:.2f}", ">= 0.65"),
            ("pipeline", f"{r['pipeline_tubelets_s']:.3f} tubelets/s", f"pipeline/encoder {r['pipeline_over_encoder']:.2f}",
             ">= 0.90"),
            ("naive", f"{r['naive_tubelets_s']:.3f} tubelets/s", f"pipeline/naive {r['pipeline_over_naive']:.2f}", ">= 1.0"),
            ("train", f"{r['train_total_s']:.1f}s total, {r['train_encoding_s']:.1f}s encoding",
             f"total/encoding {r['train_total_over_encoding']:.2f}", "<= 1.15"),
            ("memory", f"{r['memory_100_mb']:.0f} MB (100 clips), {r[f'memory_{big_n}_mb']:.0f} MB ({big_n} clips)",
             f"{big_n}/100 {r['memory_10k_over_100']:.2f}", "<= 1.10"),
            ("decode", f"{r['decode_frames_s']:.1f} frames/s at 1600x900", "", "")]
    lines = [f"{'what':<9} {'measured':<48} {'ratio':<26} target"]
    lines += [f"{a:<9} {b:<48} {c:<26} {d}" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    jepa.run_cli(main)
