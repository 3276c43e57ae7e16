"""Throughput and memory benchmark: prints ratios measured in one run and writes BENCHMARKS.md.

Usage:
  python bench.py [--quick] [--device auto|cpu|cuda] [--json bench.json] [--markdown BENCHMARKS.md]
  python bench.py --only select [--quick]   (make select/similar at 1M clips; own BENCHMARKS.md section)
  python bench.py --only learn [--quick]    (make learn fit + score at 1M clips; own BENCHMARKS.md section)
  python bench.py --only video [--quick]    (1080p H.264 MP4 vs the same frames as JPEG; own section)
  python bench.py --only ranking [--quick]  (eval's bootstrap intervals at 10k labelled clips; own section)
  python bench.py --only clip               (one 1024-frame clip vs 16 at the real 256 px crop; own section)
  make bench [BENCH_ARGS=--quick]

Measures (same batch size throughout): gemm (fp32 GFLOP/s of a large matmul, the practical ceiling), encoder
(get_vision_features of a ViT-L-sized V-JEPA 2 with random weights on ready tensors), pipeline (infer.py's
real path on generated 1600x900 JPEGs), naive (the research notebook's one-tubelet-at-a-time loop), train
(train.py wall time vs its encoding stage), fleet (1M-line manifests, merge: --only fleet), clip
(a 1024-frame clip at the real input size: --only clip) and
decode (loader frames/s). Ratios, not absolute times, are what to compare: this machine is noisy.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import demo
import infer
import cli
import jepa
from manifest import read_manifest, scan_manifest
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
             "frame_paths": [f"f{(c * frames + f) % n_files:05d}.jpg" for f in range(frames)]}
            for c in range(clips)]
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
            jepa.tubelet_cosines(head, clean_emb, masked_emb,
                                 torch.tensor([mask.mean()], dtype=torch.float32))
            done += 1
            if done == limit:
                return done / (time.perf_counter() - t0)
    return done / (time.perf_counter() - t0)


# ---- fleet scale (issues 11 and 12): bench.py --only fleet ----

def run_measured(code_args):
    """(peak RSS MB, wall s) of `python -c CODE ARGS...` in a fresh process (VmHWM printed by the code)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", *code_args], cwd=HERE, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1) or not out.stdout.split():  # 1: some clips failed, still a measurement
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
        out.write_text("".join(json.dumps({"clip_id": c, "scene": "s", "camera": "CAM_FRONT",
                                           "first_frame": "f", "score": 0.5, "tubelet_scores": [0.5]}) + "\n"
                               for c in ids))
        np.save(f"{out}.emb.npy", np.zeros((len(ids), dim), dtype="<f4"))
        Path(f"{out}.meta.json").write_text(json.dumps({"embed_dim": dim, "shard": f"{i}/{shards}"}))
        paths.append(out)
        rows[i] = None
    return paths


def bench_fleet(work, tiny, tiny_ckpt, q):
    """memory/startup of a 1M-line manifest vs a 100-line one (100 clips scored each), merge of 100 shards,
    (the long-clip memory is bench_long_clip, at the real encoder's input size)."""
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
    t0 = time.perf_counter()
    scan_manifest(large, shard=(0, big // 100))  # the floor: read and validate every line once
    res["scan_s"] = time.perf_counter() - t0
    for name, manifest, shard in (("100", small, []), ("big", large, ["--shard", f"0/{big // 100}"])):
        res[f"fleet_{name}_mb"], res[f"fleet_{name}_s"] = run_measured(
            [INFER, *base, "--manifest", str(manifest), "--output", str(folder / f"s-{name}.jsonl"), *shard])
        print(f"fleet {name}: {res[f'fleet_{name}_mb']:.0f} MB, {res[f'fleet_{name}_s']:.1f}s", flush=True)
    t0 = time.perf_counter()
    shards = fake_shards(folder, large, 100, jepa.VJEPAEncoder(str(tiny)).embed_dim)
    print(f"wrote 100 shards in {time.perf_counter() - t0:.0f}s", flush=True)
    res["merge_mb"], res["merge_s"] = run_measured(
        [INFER, "--merge", *map(str, shards), "--manifest", str(large), "--output",
         str(folder / "merged.jsonl")])
    print(f"merge: {res['merge_mb']:.0f} MB, {res['merge_s']:.1f}s", flush=True)
    res.update(memory_1m_over_100=res["fleet_big_mb"] / res["fleet_100_mb"],
               startup_1m_over_100=res["fleet_big_s"] / res["fleet_100_s"],
               fleet_lines=big)
    return res


def fleet_table(r):
    n = f"{r['fleet_lines'] // 1000}k" if r["fleet_lines"] < 1_000_000 else "1m"
    rows = [(f"memory {n}",
             f"{r['fleet_big_mb']:.0f} MB ({n} lines, 100 scored) vs {r['fleet_100_mb']:.0f} MB (100)",
             f"memory_{n}_over_100 {r['memory_1m_over_100']:.2f}", "<= 1.10"),
            (f"startup {n}", f"{r['fleet_big_s']:.1f}s vs {r['fleet_100_s']:.1f}s",
             f"startup_{n}_over_100 {r['startup_1m_over_100']:.2f}", "<= 1.5"),
            ("validation", f"{r['scan_s']:.1f}s to read and validate {n} lines (in the startup above)",
             "", ""),
            ("merge", f"100 shards, {r['fleet_lines']} clips: {r['merge_mb']:.0f} MB, {r['merge_s']:.1f}s",
             "peak RSS", "< 300 MB")]
    return "\n".join([f"{'what':<13} {'measured':<58} {'ratio':<26} target"] +
                     [f"{a:<13} {b:<58} {c:<26} {d}" for a, b, c, d in rows])


def write_section(md, title, body):
    """Replace (or append) the `## title` section of a Markdown file, keeping the rest as it is."""
    text = Path(md).read_text() if Path(md).exists() else "# Benchmarks\n"
    start = text.find(f"\n## {title}\n")
    end = text.find("\n## ", start + 1) if start >= 0 else -1
    section = f"\n## {title}\n\n{body.strip()}\n"
    text = ((text[:start] + section + (text[end:] if end >= 0 else "")) if start >= 0
            else text.rstrip() + "\n" + section)
    Path(md).write_text(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes: under two minutes on 2 CPU cores")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", help="also write the figures and ratios to this JSON file")
    p.add_argument("--markdown", default=None,
                   help="Markdown report (default BENCHMARKS.md; none with --quick)")
    p.add_argument("--only", choices=list(SECTIONS), help="run one "
                   "part only; select: make select/similar at scale; learn: make learn at 1M clips; fleet: "
                   "1M-line manifests, merge; clip: one 1024-frame clip at the real encoder's input size; "
                   "video: decode frames/s from MP4 vs JPEG; ranking: eval's bootstrap intervals at 10k "
                   "labelled clips (default: every part, these six last)")
    return p.parse_args(argv)


def write_scale_section(md, title, intro, table, verdict, notes=""):
    """write_section with the intro and verdict wrapped, the table as code and the notes after them."""
    write_section(md, title, f"{textwrap.fill(intro, 112)}\n\n```\n{table}\n```\n\n"
                             f"{textwrap.fill(verdict, 112)}" + (f"\n\n{notes}" if notes else ""))
    print(f"wrote {md} (## {title})")


def main(argv=None):
    args = parse_args(argv)
    if args.only:
        return SECTIONS[args.only](args)
    with tempfile.TemporaryDirectory(prefix="jepa-bench-") as work:
        print(f"working in {work}", flush=True)
        res = bench_core(Path(work), args)
    table = report_table(res)
    print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if md:
        write_core_markdown(md, res, table)
    for section in SECTIONS.values():
        section(args)


def machine_facts(device, batch, quick):
    return {"device": str(device), "batch_tubelets": batch, "quick": quick, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__}


def random_vit_l(folder):
    """A ViT-L-sized V-JEPA 2 (the default config: real FLOPs) with random weights, saved to `folder`."""
    from transformers import VJEPA2Config, VJEPA2Model, VJEPA2VideoProcessor
    VJEPA2Model(VJEPA2Config()).save_pretrained(folder)
    VJEPA2VideoProcessor().save_pretrained(folder)
    return folder


def bench_core(work, args):
    """gemm, encoder, pipeline, naive, decode and train figures, and their ratios, measured in `work`."""
    device, q = jepa.resolve_device(args.device), args.quick
    batch = 2 if q else 8  # tubelets per encoder call everywhere (evaluation.batch_size)
    clips, frames = (1, 4) if q else (6, 16)
    res = machine_facts(device, batch, q)
    res["gemm_gflops"] = bench_gemm(2048 if q else 4096, device)
    print(f"gemm {res['gemm_gflops']:.0f} GFLOP/s", flush=True)
    vit_dir = random_vit_l(work / "vit-l-random")
    encoder = jepa.VJEPAEncoder(str(vit_dir), device)
    res["encoder_tubelets_s"], res["encoder_gflops"] = bench_encoder(encoder, batch, 1 if q else 3)
    print(f"encoder {res['encoder_tubelets_s']:.3f} tubelets/s, {res['encoder_gflops']:.0f} GFLOP/s",
          flush=True)
    manifest = make_manifest(work / "frames", clips, frames)
    cfg = cli.load_config(None, [f"evaluation.batch_size={batch}", f"training.encode_batch_size={batch}"],
                           encoder=str(vit_dir))
    ckpt = head_checkpoint(work / "head.pt", encoder, cfg)
    res["pipeline_tubelets_s"] = bench_pipeline(ckpt, manifest, work / "scores.jsonl", args.device,
                                                clips * (frames // 2))
    res["naive_tubelets_s"] = bench_naive(encoder,
                                          jepa.head_from_checkpoint(jepa.load_checkpoint(ckpt), ckpt, device),
                                          manifest, cfg, 2 if q else 8)
    print(f"naive {res['naive_tubelets_s']:.3f} tubelets/s", flush=True)
    res["decode_frames_s"] = bench_decode(manifest, cfg, device, encoder.processor)
    del encoder
    res["train_total_s"], res["train_encoding_s"] = bench_train(manifest, vit_dir, work / "train-run",
                                                                args.device, batch)
    res["encoder_over_gemm"] = res["encoder_gflops"] / res["gemm_gflops"]
    res["pipeline_over_encoder"] = res["pipeline_tubelets_s"] / res["encoder_tubelets_s"]
    res["pipeline_over_naive"] = res["pipeline_tubelets_s"] / res["naive_tubelets_s"]
    res["train_total_over_encoding"] = res["train_total_s"] / res["train_encoding_s"]
    return res


def bench_pipeline(ckpt, manifest, out, device, tubelets):
    """infer.py's real path: tubelets/s."""
    t0 = time.perf_counter()
    infer.main(["--checkpoint", str(ckpt), "--manifest", str(manifest), "--output", str(out), "--device",
                device])
    rate = tubelets / (time.perf_counter() - t0)
    print(f"pipeline {rate:.3f} tubelets/s", flush=True)
    return rate


def bench_decode(manifest, cfg, device, processor):
    """The loader alone (decode, resize, mask): frames/s."""
    workers = jepa.num_workers(cfg, device)
    loader = jepa.make_loader(jepa.JEPADataset(read_manifest(manifest), cfg, processor), workers)
    t0 = time.perf_counter()
    n_frames = sum(len(item.mask_frac) * 2 for item in loader)
    rate = n_frames / (time.perf_counter() - t0)
    print(f"decode {rate:.1f} frames/s ({workers} workers)", flush=True)
    return rate


def bench_train(manifest, vit_dir, run_dir, device, batch):
    """train.py for 30 epochs: (total seconds, seconds of its encoding stage)."""
    t0 = time.perf_counter()
    train.main(["--manifest", str(manifest), "--encoder", str(vit_dir), "--run-dir", str(run_dir), "--epochs",
                "30", "--device", device, "--set", f"training.encode_batch_size={batch}"])
    total = time.perf_counter() - t0
    encoding = json.loads((run_dir / "timing.json").read_text())["encode_s"]
    print(f"train {total:.1f}s total, {encoding:.1f}s encoding", flush=True)
    return total, encoding


def write_core_markdown(md, res, table):
    """Rewrite the figures at the top of `md`; the hand-written "How to read it" part is kept."""
    old = Path(md).read_text() if Path(md).exists() else ""
    notes = old[old.index("## How to read it"):] if "## How to read it" in old else ""
    checks = {"encoder/gemm": res["encoder_over_gemm"] >= 0.65,
              "pipeline/encoder": res["pipeline_over_encoder"] >= 0.90,
              "pipeline/naive": res["pipeline_over_naive"] >= 1.0,
              "train total/encoding": res["train_total_over_encoding"] <= 1.15}
    missed = [k for k, ok in checks.items() if not ok]
    verdict = (f"Targets met in this run: all {len(checks)} ({', '.join(checks)})." if not missed else
               f"Targets MISSED in this run: {', '.join(missed)} (see the notes below).")
    Path(md).write_text(f"# Benchmarks\n\n`python bench.py{' --quick' if res['quick'] else ''}` on "
                        f"{res['date']}, {res['machine']}, {res['cpus']} CPUs, {res['torch_threads']} torch "
                        f"threads, device {res['device']}, torch {res['torch']}, batch "
                        f"{res['batch_tubelets']} tubelets.\n\n```\n{table}\n```\n\n{verdict}\n"
                        f"Shard-merged output equal to a single run is asserted in `tests/test_scale.py` "
                        f"(byte for byte).\n\n{notes}")
    print(f"wrote {md}")


def bench_fleet_section(args):
    """Run bench_fleet with the tiny encoder; outside --quick, (re)write its own section of BENCHMARKS.md."""
    with tempfile.TemporaryDirectory(prefix="jepa-bench-fleet-") as work:
        work = Path(work)
        tiny = demo.make_tiny_encoder(work / "tiny")
        ckpt = head_checkpoint(work / "tiny-head.pt", jepa.VJEPAEncoder(str(tiny)),
                               cli.load_config(None, encoder=str(tiny)))
        r = bench_fleet(work, tiny, ckpt, args.quick)
    table = fleet_table(r)
    print("\n" + table)
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if md:
        write_section(md, "Fleet scale", "`python bench.py --only fleet` on "
                                         f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs, tiny "
                                         f"encoder, CPU.\n\n```\n{table}\n```\n\n{FLEET_NOTES}")
        print(f"wrote {md}")


# ---- one long clip at the real encoder's input size (issue 22): bench.py --only clip ----

def bench_long_clip(work):
    """Peak RSS of infer.py on one 1024-frame clip vs one 16-frame clip (1600x900 JPEGs, num_workers=0)
    with a V-JEPA 2 of the real input size and width (256 px crop, D=1024, random weights) but one layer, so
    CPU time stays minutes; fewer weights make the fixed part of the RSS smaller and the ratio stricter."""
    from transformers import VJEPA2Config, VJEPA2Model, VJEPA2VideoProcessor
    enc_dir = work / "vit-1layer"
    torch.manual_seed(0)
    VJEPA2Model(VJEPA2Config(crop_size=256, hidden_size=1024, num_hidden_layers=1, num_attention_heads=16,
                             pred_num_hidden_layers=1, num_pooler_layers=1)).save_pretrained(enc_dir)
    VJEPA2VideoProcessor(crop_size=256).save_pretrained(enc_dir)
    encoder = jepa.VJEPAEncoder(str(enc_dir))
    ckpt = head_checkpoint(work / "head-1024.pt", encoder, cli.load_config(None, encoder=str(enc_dir)))
    res = {"embed_dim": encoder.embed_dim}
    del encoder
    frames = [f for f in make_manifest(work / "long", 1, 16).read_text().split('"') if f.endswith(".jpg")]
    for n in (16, 1024):
        m = work / "long" / f"clip{n}.jsonl"
        m.write_text(json.dumps({"clip_id": f"drive{n}", "frame_paths": (frames * 64)[:n]}) + "\n")
        res[f"clip_{n}_mb"], res[f"clip_{n}_s"] = run_measured(
            [INFER, "--checkpoint", str(ckpt), "--device", "cpu", "--set", "data.num_workers=0",
             "--manifest", str(m), "--output", str(work / "long" / f"s{n}.jsonl")])
        print(f"one {n}-frame clip: {res[f'clip_{n}_mb']:.0f} MB, {res[f'clip_{n}_s']:.0f}s", flush=True)
    res["clip_1024_over_16"] = res["clip_1024_mb"] / res["clip_16_mb"]
    return res


def bench_clip_section(args):
    """Run bench_long_clip; outside --quick, (re)write its own section of BENCHMARKS.md."""
    with tempfile.TemporaryDirectory(prefix="jepa-bench-clip-") as work:
        r = bench_long_clip(Path(work))
    measured = f"{r['clip_1024_mb']:.0f} MB (1024 frames) vs {r['clip_16_mb']:.0f} MB (16)"
    ratio = f"clip_1024_over_16 {r['clip_1024_over_16']:.2f}"
    table = "\n".join([f"{'what':<13} {'measured':<58} {'ratio':<26} target",
                       f"{'long clip':<13} {measured:<58} {ratio:<26} <= 1.2"])
    print("\n" + table)
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if md:
        write_section(md, "Long clip", "`python bench.py --only clip` on "
                                       f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs, CPU, "
                                       f"encoder input 256 px, D={r['embed_dim']}, random weights, 1 layer."
                                       f"\n\n```\n{table}\n```\n\n{CLIP_NOTES}")
        print(f"wrote {md}")


CLIP_NOTES = """\
- One clip of 1024 frames vs one of 16 (1600x900 JPEGs, `data.num_workers=0`, `infer.py`'s real path, peak
  RSS): clips are decoded `jepa.SLICE_TUBELETS` (8) tubelets at a time, and a slice's pixel tensors are
  dropped once queued for the encoder, so only embeddings (D floats per tubelet) grow with the clip. The
  encoder is the real one's input size and width (256 px crop, D=1024) with one layer, so CPU time stays in
  minutes; a smaller fixed part of the RSS makes the ratio stricter, not looser. Before issue 22 the queue
  kept every slice's pixels until its clip was done (~1.6 MB per frame at this crop). The main-process pixel
  bytes (1024 vs 16 frames) are asserted in `tests/test_hardening.py`.
"""


FLEET_NOTES = """\
- **memory / startup**: `infer.py --shard 0/10000` on a 1,000,000-line manifest (16 frames per line, paths to
  16 real JPEGs) scores 100 clips, as does the 100-line run. The manifest is validated whole (every line
  parsed once, every problem listed) but only the shard's clips are kept, as byte offsets, line numbers, frame
  counts and clip_id hashes (32 bytes each); duplicates are found through the hashes. Reading and validating
  1M lines once is the floor of the startup cost.
- **merge**: 100 shard files (lines, `.emb.npy`, `.meta.json`) covering the 1M clips are interleaved in
  manifest order as a stream; nothing is held whole.
- **long clip**: moved to its own section ("Long clip", `--only clip`), measured at the real input size."""


def report_table(r):
    rows = [("gemm", f"{r['gemm_gflops']:.0f} GFLOP/s", "", ""),
            ("encoder", f"{r['encoder_tubelets_s']:.3f} tubelets/s, {r['encoder_gflops']:.0f} GFLOP/s",
             f"encoder/gemm {r['encoder_over_gemm']:.2f}", ">= 0.65"),
            ("pipeline", f"{r['pipeline_tubelets_s']:.3f} tubelets/s",
             f"pipeline/encoder {r['pipeline_over_encoder']:.2f}", ">= 0.90"),
            ("naive", f"{r['naive_tubelets_s']:.3f} tubelets/s",
             f"pipeline/naive {r['pipeline_over_naive']:.2f}", ">= 1.0"),
            ("train", f"{r['train_total_s']:.1f}s total, {r['train_encoding_s']:.1f}s encoding",
             f"total/encoding {r['train_total_over_encoding']:.2f}", "<= 1.15"),
            ("decode", f"{r['decode_frames_s']:.1f} frames/s at 1600x900", "", "")]
    lines = [f"{'what':<9} {'measured':<48} {'ratio':<26} target"]
    lines += [f"{a:<9} {b:<48} {c:<26} {d}" for a, b, c, d in rows]
    return "\n".join(lines)


# ---- make select / make similar at scale (issue 13): synthetic embeddings, D=1024 ----

SELECT_HEADING = "Selection at scale"


def bench_clip(i, group=10):
    """(clip_id, scene) of synthetic clip i: 2 events of `group` clips per scene (so 10,000 clips hold 500
    scenes, room for 1,000 picks at selection.per_scene 3)."""
    scene = f"scene-{i // (2 * group):06d}"
    return f"{scene}__CAM_FRONT__{i:07d}", scene


def make_selection_inputs(folder, n, dim=1024, group=10, seed=0):
    """scores.jsonl (+ .emb.npy, .meta.json) and manifest.jsonl for n clips, as infer.py and make manifest
    write them. Clips come in events of `group` near-duplicates (cosine ~0.99, ~0.5 to other events) with
    nearly equal scores, so the top of the ranking is crowded the way real footage crowds it; every 97th
    clip failed (null score, NaN row). The .npy is written chunk by chunk through a memory map."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scores = folder / "scores.jsonl"
    emb = np.lib.format.open_memmap(f"{scores}.emb.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    shared = rng.standard_normal(dim, dtype=np.float32)  # what all driving clips have in common
    step = 65536 // group * group
    with open(scores, "w") as out, open(folder / "manifest.jsonl", "w") as man:
        for start in range(0, n, step):
            rows = min(step, n - start)
            events = rng.standard_normal((-(-rows // group), dim), dtype=np.float32)
            block = shared + np.repeat(events, group, axis=0)[:rows]
            block += 0.15 * rng.standard_normal((rows, dim), dtype=np.float32)
            event_score = np.repeat(rng.uniform(0, 0.5, len(events)), group)[:rows]
            score = np.round(event_score + rng.uniform(0, 1e-3, rows), 6).tolist()
            for i in range(start, start + rows):
                cid, scene = bench_clip(i, group)
                s = score[i - start]
                frames = [f"samples/CAM_FRONT/{cid}_{k}.jpg" for k in range(8)]
                row = {"clip_id": cid, "scene": scene, "camera": "CAM_FRONT",
                       "first_frame": f"/data/{frames[0]}", "score": s, "tubelet_scores": [s] * 4}
                if i % 97 == 0:
                    block[i - start] = np.nan
                    row.update(score=None, tubelet_scores=[], error="frame unreadable")
                out.write(json.dumps(row) + "\n")
                stamps = [1532402927612460 + (8 * i + k) * 500_000 for k in range(8)]  # µs, 2 Hz
                man.write(json.dumps({"clip_id": cid, "scene_id": scene, "camera": "CAM_FRONT",
                                      "frame_paths": frames, "timestamps": stamps}) + "\n")
            emb[start:start + rows] = block
            emb.flush()
    del emb
    meta = {"embed_dim": dim, "encoder_fingerprint": "bench"}
    (folder / "scores.jsonl.meta.json").write_text(json.dumps(meta))
    return scores


def selection_peak(args, module="selection"):
    """(seconds, peak RSS MB, RSS MB after imports) of one selection.py (or `module`) command in a fresh
    process."""
    code = (f"import re, sys, time, {module}; "
            "rss = lambda k: int(re.search(k + r':\s+(\d+)', open('/proc/self/status').read()).group(1)); "
            f"base = rss('VmRSS'); t0 = time.perf_counter(); {module}.main(sys.argv[1:]); "
            "print('BENCH', time.perf_counter() - t0, rss('VmHWM') / 1024, base / 1024)")
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=HERE, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return tuple(float(x) for x in out.stdout.rsplit("BENCH", 1)[1].split())


def bench_select(quick, top=1000):
    """make select (TOP of n, with the manifest) and one make similar query, at a small and a large n."""
    sizes = (2_000, 20_000) if quick else (10_000, 1_000_000)
    res = {"select_top": top, "select_sizes": sizes}
    with tempfile.TemporaryDirectory(prefix="jepa-bench-select-") as work:
        work = Path(work)
        for n in sizes:
            t0 = time.perf_counter()
            scores = make_selection_inputs(work / str(n), n)
            print(f"select inputs: {n} clips x 1024 in {time.perf_counter() - t0:.0f}s", flush=True)
            out = work / f"sel{n}.jsonl"
            sel = res[f"select_{n}"] = selection_peak(
                ["select", "--scores", scores, "--manifest", scores.parent / "manifest.jsonl",
                 "--top", top, "--output", out])
            query = bench_clip(n // 2 + 1)[0]  # a scored clip (not a multiple of 97)
            sim = res[f"similar_{n}"] = selection_peak(
                ["similar", "--scores", scores, "--clip", query, "--output", work / f"sim{n}.jsonl"])
            res[f"select_{n}_walked"] = json.loads(Path(f"{out}.meta.json").read_text())["walked"]
            print(f"select {n}: {sel[0]:.1f}s, peak RSS {sel[1]:.0f} MB (walked "
                  f"{res[f'select_{n}_walked']}); similar: {sim[0]:.1f}s, {sim[1]:.0f} MB", flush=True)
            shutil.rmtree(work / str(n))  # 4 GB at 1M: gone before the next size
    small, big = sizes
    for what in ("select", "similar"):
        res[f"{what}_rss_ratio"] = res[f"{what}_{big}"][1] / res[f"{what}_{small}"][1]
    return res


def select_table(r):
    small, big = r["select_sizes"]
    lines = [f"{'what':<8} {'clips':>9} {'seconds':>8} {'peak RSS':>9} {'above imports':>14}  "
             f"RSS {big}/{small}"]
    for what in ("select", "similar"):
        for n in (small, big):
            secs, peak, base = r[f"{what}_{n}"]
            ratio = f"  {r[f'{what}_rss_ratio']:.2f} (target <= 1.5)" if n == big else ""
            lines.append(f"{what:<8} {n:>9,} {secs:>8.1f} {peak:>6.0f} MB {peak - base:>11.0f} MB{ratio}")
    return "\n".join(lines)


def bench_select_section(args):
    """Run bench_select; outside --quick, (re)write its own section of BENCHMARKS.md and keep the rest."""
    r = bench_select(args.quick)
    table = select_table(r)
    print("\n" + table)
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if not md:
        return
    small, big = r["select_sizes"]
    met = r[f"select_{big}"][0] < 60 and max(r["select_rss_ratio"], r["similar_rss_ratio"]) <= 1.5
    intro = (f"`python bench.py --only select` on {datetime.date.today().isoformat()}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs: `make select TOP={r['select_top']}` (with a manifest) and one "
             f"`make similar` query over synthetic embeddings, D=1024 float32 ({big * 4096 / 1e9:.1f} GB at "
             f"{big:,} clips). Each command runs in a fresh process; peak RSS is its VmHWM, `above imports` "
             f"the part above its RSS once its imports are done (numpy, PIL, yaml; selection.py needs no "
             f"torch).")
    verdict = (f"Targets (select < 60 s at {big:,} clips; RSS {big:,}/{small:,} <= 1.5 for both): "
               f"{'met' if met else 'MISSED'} in this run. At {big:,} clips select walked "
               f"{r[f'select_{big}_walked']:,} clips for its {r['select_top']:,} picks.")
    write_scale_section(md, SELECT_HEADING, intro, table, verdict, SELECT_NOTES)


def bench_ranking(n=10_000, scenes=500, resamples=1000, seed=0):
    """Seconds for ranking.compare (4 score arrays + the exact random baseline, `resamples` scene
    resamples) on n labelled clips, and for knn_density of n queries against n training clips (D=1024)."""
    import ranking
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.05).astype(int)
    methods = {m: rng.random(n) + 0.3 * labels for m in ("trained", "masked_gap", "untrained_head",
                                                          "knn_density")}
    methods["random"] = None
    t = time.perf_counter()
    out = ranking.compare(methods, labels, [10, 50, 100], scenes=[f"s{i % scenes}" for i in range(n)],
                          resamples=resamples)
    compare_s = time.perf_counter() - t
    q, train = rng.normal(size=(n, 1024)).astype(np.float32), rng.normal(size=(n, 1024)).astype(np.float32)
    t = time.perf_counter()
    ranking.knn_density(q, train, 5)
    return {"n": n, "scenes": scenes, "resamples": resamples, "unit": out["bootstrap"]["unit"],
            "compare_s": compare_s, "knn_s": time.perf_counter() - t}


def bench_ranking_section(args):
    """Run bench_ranking; outside --quick, (re)write the `Ranking intervals` section of BENCHMARKS.md."""
    r = bench_ranking(n=2000 if args.quick else 10_000)
    ok = r["compare_s"] < 10
    table = (f"compare   {r['compare_s']:6.2f} s   target < 10 s: {r['n']:,} labelled clips, {r['scenes']} "
             f"scenes, 5 methods, {r['resamples']} {r['unit']} resamples\n"
             f"knn       {r['knn_s']:6.2f} s   {r['n']:,} queries x {r['n']:,} training clips, D=1024, k=5")
    print(table)
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if md:
        notes = (f"Target (intervals under 10 s at 10k labelled clips): {'met' if ok else 'MISSED'} in "
                 "this run. `compare` is `ranking.compare` as `eval.py --labels` calls it: per method the "
                 "point metrics, then AP and AUROC on every resample (integer weights per clip, 100 "
                 "resamples per numpy pass) and the paired differences; `knn` is the knn_density baseline, "
                 "streamed 4,096 rows a side.")
        body = (f"`python bench.py --only ranking` on {datetime.date.today().isoformat()}, "
                f"{platform.machine()}, {os.cpu_count()} CPUs (numpy only).\n\n```\n{table}\n```\n\n"
                + textwrap.fill(notes, 112))
        write_section(md, "Ranking intervals", body)
        print(f"wrote {md} (Ranking intervals)")


SELECT_NOTES = """\
- **Inputs** (`make_selection_inputs`): events of 10 near-duplicate clips (cosine ~0.99 within an event, ~0.5
  between events) with nearly equal scores, so the raw top is crowded by repeats; 2 events a scene; every
  97th clip failed (null score, NaN row). The manifest has 8 frames and timestamps a clip. At 10,000 clips
  the 1,000 picks take one clip of every event, so select walks nearly all clips there.
- **Time** in select at 1M: mostly reading the scores file (one `json.loads` per line, ~10 us each here), then
  ordering them and streaming the manifest (lines of other clips are skipped by a regex on their clip_id,
  ~2 s). The greedy walk reads only the walked clips' rows, 1,024 at a time, so its cost grows with the
  clips it walks: when the clips hold fewer distinct events than TOP, it walks every scored clip.
- **Memory:** about 30 MB of each peak is the interpreter with its imports (selection.py imports no torch).
  Above that, select holds a float64 score, an int32 scene and an int64 line offset per clip (20 MB at 1M;
  clip_ids are re-read from their lines when needed) plus one walk batch. Scattered rows are read with
  `pread`: read through a memory map, each row touched mapped a whole page-cache folio (over 1 MB a row on
  this kernel), and one batch of 1,024 rows added 1.4 GB to RSS. similar holds the same per-clip arrays plus
  one `selection.chunk_mb` chunk and its mapping.
- similar at 1M reads 4 GB. Here the file was still in the page cache from being written; from a cold disk,
  add the time to read 4 GB."""



# ---- the probe at scale (issue 20): bench.py --only learn ----

LEARN_HEADING = "Learning at scale"


def bench_learn(quick, labelled=1000):
    """make learn (fit on `labelled` clips, then p_interesting for every clip) at a small and a large n, over
    make_selection_inputs' clips; every n/labelled-th clip labelled, 1 and 0 in turn."""
    sizes = (2_000, 20_000) if quick else (10_000, 1_000_000)
    res = {"learn_labelled": labelled, "learn_sizes": sizes}
    with tempfile.TemporaryDirectory(prefix="jepa-bench-learn-") as work:
        work = Path(work)
        for n in sizes:
            scores = make_selection_inputs(work / str(n), n)
            every = n // labelled
            labels = work / f"labels{n}.jsonl"
            labels.write_text("".join(json.dumps({"clip_id": bench_clip(i)[0], "binary_label": j % 2}) + "\n"
                                      for j, i in enumerate(range(1, n, every))))
            res[f"learn_{n}"] = selection_peak(["fit", "--scores", scores, "--labels", labels, "--output",
                                                work / f"probe{n}.jsonl"], module="learn")
            meta = json.loads(Path(f"{work / f'probe{n}.jsonl'}.meta.json").read_text())
            res[f"learn_{n}_cv_ap"] = meta["cv_ap"]["probe"]
            secs, peak, _ = res[f"learn_{n}"]
            print(f"learn {n}: {secs:.1f}s, peak RSS {peak:.0f} MB, CV AP {meta['cv_ap']['probe']:.3f}",
                  flush=True)
            shutil.rmtree(work / str(n))
    small, big = sizes
    res["learn_rss_ratio"] = res[f"learn_{big}"][1] / res[f"learn_{small}"][1]
    return res


def bench_learn_section(args):
    """Run bench_learn; outside --quick, (re)write its own section of BENCHMARKS.md and keep the rest."""
    r = bench_learn(args.quick)
    small, big = r["learn_sizes"]
    lines = [f"{'what':<6} {'clips':>9} {'seconds':>8} {'peak RSS':>9} {'above imports':>14}  "
             f"RSS {big}/{small}"]
    for n in (small, big):
        secs, peak, base = r[f"learn_{n}"]
        ratio = f"  {r['learn_rss_ratio']:.2f} (target <= 1.5)" if n == big else ""
        lines.append(f"{'learn':<6} {n:>9,} {secs:>8.1f} {peak:>6.0f} MB {peak - base:>11.0f} MB{ratio}")
    table = "\n".join(lines)
    print("\n" + table)
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if not md:
        return
    met = r[f"learn_{big}"][0] < 60 and r["learn_rss_ratio"] <= 1.5
    intro = (f"`python bench.py --only learn` on {datetime.date.today().isoformat()}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs: `make learn` (learn.py fit: column statistics over every clip, the "
             f"probe fitted and C chosen by scene-grouped 5-fold CV on {r['learn_labelled']:,} labelled "
             f"clips, "
             f"then p_interesting written for every clip) over the same synthetic D=1024 embeddings as "
             f"'Selection at scale' (every n/1,000-th clip labelled, 1 and 0 in turn), in a fresh process.")
    verdict = (f"Targets (fit + score < 60 s at {big:,} clips; RSS {big:,}/{small:,} <= 1.5): "
               f"{'met' if met else 'MISSED'} in this run. The embeddings are read in selection.chunk_mb "
               f"chunks twice (statistics, then scoring); only the labelled rows are held whole.")
    write_scale_section(md, LEARN_HEADING, intro, table, verdict)


# ---- video decode (issue 21): bench.py --only video ----

def make_video_and_jpegs(folder, frames, size=(1920, 1080), fps=30):
    """A 1080p H.264 MP4 (libx264 veryfast, keyframe every second, as dashcams write) of a moving textured
    scene, and the same decoded frames as JPEG files (quality 95)."""
    import av
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (h, w + frames * 8, 3), dtype=np.uint8)
    ramp = np.linspace(0, 180, w + frames * 8, dtype=np.uint8)[None, :, None]
    path = folder / "drive.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "g": str(fps), "crf": "23"}
        for i in range(frames):
            rgb = np.ascontiguousarray((texture + ramp)[:, i * 8:i * 8 + w])
            c.mux(s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        c.mux(s.encode())
    import video
    jpegs = []
    for i in range(frames):  # the decoded frames, so both routes hold the same pictures
        jpegs.append(folder / f"frame_{i:05d}.jpg")
        video.read_frame(str(path), i).save(jpegs[-1], quality=95)
    return path, jpegs


def bench_video(quick):
    """Loader frames/s for one worker (num_workers=0, data.image_size 256): clips of 16 frames taking every
    2nd frame (FPS=15 of a 30 fps file), back to back, read from the MP4 and from the JPEG files."""
    with tempfile.TemporaryDirectory(prefix="jepa-bench-video-") as work:
        return _decode_rates(Path(work), quick)


def _decode_rates(work, quick):
    frames = 128 if quick else 480
    path, jpegs = make_video_and_jpegs(work, frames)
    every, per_clip = 2, 16
    starts = range(0, frames - every * (per_clip - 1), every * per_clip)
    rows_v = [{"clip_id": f"v{s}", "video": str(path), "frame_indices": list(range(s, s + every * per_clip,
                                                                                    every))} for s in starts]
    rows_j = [{"clip_id": f"j{s}", "frame_paths": [str(jpegs[i]) for i in r["frame_indices"]]}
              for s, r in zip(starts, rows_v)]
    cfg = cli.load_config()
    res = {"frames_in_file": frames, "clips": len(rows_v), "size": "1920x1080"}
    for name, rows in (("jpeg", rows_j), ("mp4", rows_v)):
        m = work / f"{name}.jsonl"
        m.write_text("".join(json.dumps(r) + "\n" for r in rows))
        ds = jepa.JEPADataset(read_manifest(m), cfg, None)
        best = None
        for _ in range(2 if quick else 3):
            import video
            video._OPEN.clear()  # each repeat opens the file afresh
            t0 = time.perf_counter()
            for j in range(len(ds)):
                assert ds[j].error is None
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        res[f"{name}_fps"] = len(rows) * per_clip / best
    res["mp4_over_jpeg"] = res["mp4_fps"] / res["jpeg_fps"]
    return res


def bench_video_section(args):
    """Run bench_video; outside --quick, (re)write its own section of BENCHMARKS.md."""
    try:
        import av  # noqa: F401
    except ImportError:
        print("video part skipped: PyAV is not installed (pip install -r requirements.txt)")
        return
    r = bench_video(args.quick)
    table = (f"{'route':10} {'frames/s per worker':>20}\n{'jpeg':10} {r['jpeg_fps']:20.1f}\n"
             f"{'mp4 h264':10} {r['mp4_fps']:20.1f}\n{'mp4/jpeg':10} {r['mp4_over_jpeg']:20.2f}")
    print("\n" + table)
    md = args.markdown or (None if args.quick else "BENCHMARKS.md")
    if md:
        met = "met" if r["mp4_over_jpeg"] >= 1.0 else "MISSED"
        intro = (
            f"`python bench.py --only video` on {datetime.date.today().isoformat()}, {os.cpu_count()} CPUs: "
            f"one loader worker (`num_workers=0`, `data.image_size` 256, no processor) reading {r['clips']} "
            f"clips of 16 frames, every 2nd frame of a {r['frames_in_file']}-frame {r['size']} 30 fps H.264 "
            f"MP4 (libx264 veryfast, keyframe every 30 frames, written by the bench with PyAV) vs the same "
            f"decoded frames as JPEG files (quality 95). Best of repeats.")
        verdict = (
            f"Target (video at least as fast per frame as JPEG): {met} in this run. The MP4 route decodes "
            f"every frame of the stream (the skipped odd frames too: H.264 frames depend on each other) and "
            f"converts each used one to RGB; the JPEG route decodes only the used files.")
        write_section(md, "Video decode", f"{textwrap.fill(intro, 110)}\n\n```\n{table}\n```\n\n"
                                          f"{textwrap.fill(verdict, 110)}")
        print(f"wrote {md}")


# the parts --only runs, each writing its own section of BENCHMARKS.md; a full run ends with all of them
SECTIONS = {"fleet": bench_fleet_section, "clip": bench_clip_section, "select": bench_select_section,
            "learn": bench_learn_section, "video": bench_video_section, "ranking": bench_ranking_section}


if __name__ == "__main__":
    cli.run_cli(main)
