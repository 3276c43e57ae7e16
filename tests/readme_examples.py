"""Run every shell example of README.md, as written, in a temporary copy of this checkout.

Usage:
  python tests/readme_examples.py            # every example (several minutes; `make walk-readme`)
  python tests/readme_examples.py --fast     # only the examples that need no encoder (seconds; make test)
  python tests/readme_examples.py --list     # what would run, what is skipped and why; runs nothing
  python tests/readme_examples.py --keep     # keep the temporary folder for a look afterwards

Examples are the README's code blocks (indented by 4 spaces or fenced as sh/bash/shell/console) whose first
word is a command (make, python, hf, ...). Their lines run in README order in one copy of the working tree
(tracked and untracked, not ignored files), so a later example sees what an earlier one made, as a reader
following along would. Stand-ins, so that no example needs the network, a GPU or a real dataset:
- the real encoder: the demo's tiny random V-JEPA 2, installed in a Hugging Face cache (HF_HOME) under the hub
  id facebook/vjepa2-vitl-fpc64-256, and copied to /models/vjepa2-vitl-fpc64-256's stand-in folder;
- /data/nuscenes: a small v1.0-mini tree (2 scenes, 6 cameras, 20 key frames each); /data/drives: 3 folders of
  frames; /data/videos: 2 H.264 MP4s (SCENE/front.mp4, 80 frames at 10 fps, made with PyAV);
  data/train.jsonl, data/val.jsonl (+ data/val_labels.jsonl), data/fleet.jsonl and data/manifest.jsonl: the
  demo's synthetic drives (manifest.jsonl is the fleet, a manifest other than train.jsonl);
- ../shared: a link to this checkout's ../shared when there is one.
Absolute paths above are rewritten to their stand-ins; placeholders (`...`, `best.pt`, `fleet.jsonl`) are
filled from SUBSTITUTIONS; commands that cannot run here are in SKIP with the reason. A command left with a
placeholder fails with a message naming it: extend SUBSTITUTIONS or SKIP when the README gains one.
Exit status 0 when every example that ran exited 0, else 1.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "facebook/vjepa2-vitl-fpc64-256"
COMMANDS = ("make", "python", "python3", "hf", "huggingface-cli", "bash", "pip", "git", "cd", "#SBATCH")

# (pattern, reason): commands matching the regex are not run
SKIP = [
    (r"^make test\b", "the test suite itself (CI runs it; the walk is part of it or run beside it)"),
    (r"^make walk-readme\b", "this walk itself"),
    (r"^make install\b", "builds .venv; the walk runs every example with this Python (PYTHON=)"),
    (r"^make bench\b", "about 15 minutes of benchmarks that rewrite BENCHMARKS.md"),
    (r"^(hf|huggingface-cli) download\b", "downloads 1.3 GB: the tiny encoder stands in for the snapshot"),
]
# (literal text in a command, replacement): placeholders filled with the stand-ins' names
SUBSTITUTIONS = [
    ("MANIFEST=...", "MANIFEST=data/train.jsonl RUN=experiments/walk-offline"),
    ("ENCODER=...", "ENCODER=/models/vjepa2-vitl-fpc64-256"),
    ("CKPT=best.pt", "CKPT=experiments/lr1e-3/best.pt"),
    ("MANIFEST=fleet.jsonl", "MANIFEST=data/fleet.jsonl"),
    ("CLIP=scene-0061__CAM_FRONT__000", "CLIP=fleet_00__CAM_FRONT__000"),  # a clip of the stand-in fleet
]
PLACEHOLDER = re.compile(r"\.\.\.|path/to/|\bRUN/|<[a-z_ -]+>")
NEEDS_NO_ENCODER = re.compile(r"^make (manifest|check|help)\b|^python3? manifest\.py\b")


# ---- finding the examples ----

def blocks(text):
    """Code blocks of a Markdown text as (first line number, [lines]): 4-space indented blocks after a blank
    line and outside lists' continuation text, and fenced blocks marked sh, bash, shell, console or
    nothing."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\w*)\s*$", lines[i])
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")),
                       len(lines))
            if fence.group(1) in ("", "sh", "bash", "shell", "console"):
                out.append((i + 2, [ln.removeprefix("$ ") for ln in lines[i + 1:end]]))
            i = end + 1
            continue
        if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            start = i
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            out.append((start + 1, [ln[4:] for ln in lines[start:i]]))
            continue
        i += 1
    return out


def commands(text):
    """Shell commands of the README's example blocks, in order: (line number, command). Backslash
    continuations are joined, comment lines kept only for #SBATCH directives, trailing `# comments`
    dropped."""
    out = []
    for first, body in blocks(text):
        words = body[0].split() if body and body[0].strip() else []
        if not words or not (words[0] in COMMANDS or re.match(r"^[A-Z_]+=", words[0])):
            continue  # JSON, output samples, prose
        k = 0
        while k < len(body):
            line, number = body[k].rstrip(), first + k
            while line.endswith("\\") and k + 1 < len(body):
                k += 1
                line = line[:-1].rstrip() + " " + body[k].strip()
            k += 1
            if not line.strip() or (line.lstrip().startswith("#")
                                    and not line.lstrip().startswith("#SBATCH")):
                continue
            out.append((number, strip_comment(line.strip())))
    return out


def strip_comment(line):
    """`cmd args   # comment` -> `cmd args`; a # inside quotes or $(...) is kept."""
    if line.startswith("#SBATCH"):
        return line
    depth, quote = 0, None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif line.startswith("$(", i):
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "#" and not depth and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def plan(text, fast=False):
    """[(line, command as written, command to run or None, why skipped)]."""
    out = []
    for number, cmd in commands(text):
        reason = next((why for pattern, why in SKIP if re.search(pattern, cmd)), None)
        if cmd.startswith("#SBATCH"):
            reason = "a Slurm directive: its --array ids are given to the next command, one run each"
        elif reason is None and fast and not NEEDS_NO_ENCODER.search(cmd):
            reason = "--fast: needs the encoder"
        run = None
        if reason is None:
            run = cmd
            for literal, replacement in SUBSTITUTIONS:
                run = run.replace(literal, replacement)
        out.append((number, cmd, run, reason))
    return out


# ---- stand-ins ----

def install_in_hf_cache(snapshot, hf_home, repo_id):
    """Copy a model snapshot folder into a Hugging Face cache under hf_home as `repo_id` (refs/main -> one
    commit), so from_pretrained(repo_id) finds it offline, exactly as if it had been downloaded there."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(snapshot, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo


def jpeg(path, shade):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 18), (shade, 120, 90)).save(path)


def fake_nuscenes(root, keyframes=20):
    """A v1.0-mini tree with the five tables manifest.py reads: scene-0061 (mini train) and scene-0103 (mini
    val), six cameras, `keyframes` key frames each at 2 Hz (no sweeps), linked by tokens as in nuScenes."""
    tok = lambda *parts: hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()  # noqa: E731
    cams = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
    t = {"scene": [], "sample": [], "sample_data": [],
         "calibrated_sensor": [{"token": tok("calib", c), "sensor_token": tok("sensor", c)} for c in cams],
         "sensor": [{"token": tok("sensor", c), "channel": c, "modality": "camera"} for c in cams]}
    for n, scene in enumerate(("scene-0061", "scene-0103")):
        samples = [tok(scene, k) for k in range(keyframes)]
        t["scene"].append({"token": tok(scene), "name": scene, "nbr_samples": keyframes,
                           "first_sample_token": samples[0], "last_sample_token": samples[-1]})
        for k, s in enumerate(samples):
            ts = 1532402927000000 + n * 10**8 + k * 500000
            t["sample"].append({"token": s, "timestamp": ts, "scene_token": tok(scene),
                                "prev": samples[k - 1] if k else "",
                                "next": samples[k + 1] if k + 1 < keyframes else ""})
            for c in cams:
                name = f"samples/{c}/{scene}__{c}__{ts}.jpg"
                jpeg(root / name, 40 + 5 * k)
                t["sample_data"].append({
                    "token": tok(scene, c, k), "sample_token": s, "calibrated_sensor_token": tok("calib", c),
                    "timestamp": ts, "is_key_frame": True, "filename": name, "fileformat": "jpg",
                    "prev": tok(scene, c, k - 1) if k else "",
                    "next": tok(scene, c, k + 1) if k + 1 < keyframes else ""})
    (root / "v1.0-mini").mkdir(parents=True, exist_ok=True)
    for name, rows in t.items():
        (root / "v1.0-mini" / f"{name}.json").write_text(json.dumps(rows))


def fake_drives(root, scenes=3, frames=32):
    for s in range(scenes):
        for f in range(frames):
            jpeg(root / f"drive_{s:02d}" / f"frame_{f}.jpg", 30 + 6 * f)


def fake_videos(root, scenes=2, frames=80):
    """/data/videos: SCENE/front.mp4 files, H.264 at 10 fps written with PyAV (skipped when av is missing)."""
    try:
        import av
        import numpy as np
    except ImportError:
        return
    for s in range(scenes):
        (root / f"drive_{s:02d}").mkdir(parents=True, exist_ok=True)
        with av.open(str(root / f"drive_{s:02d}" / "front.mp4"), "w") as c:
            stream = c.add_stream("libx264", rate=10)
            stream.width, stream.height = 64, 48
            for f in range(frames):
                rgb = np.full((48, 64, 3), (30 + 2 * f, 120, 90 + 40 * s), np.uint8)
                c.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            c.mux(stream.encode())


def checkout_copy(dest):
    """Copy the working tree's tracked and untracked, not ignored files (what a commit of it would hold)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def stand_ins(tmp, fast):
    """Build the stand-ins under tmp; returns ({absolute path in the README: stand-in}, environment)."""
    repo = tmp / "repo"
    repo.mkdir()
    checkout_copy(repo)
    if (ROOT.parent / "shared").is_dir():
        (tmp / "shared").symlink_to(ROOT.parent / "shared")
    fake_nuscenes(tmp / "nuscenes")
    fake_drives(tmp / "drives")
    fake_videos(tmp / "videos")
    paths = {"/data/nuscenes": tmp / "nuscenes", "/data/drives": tmp / "drives",
             "/data/videos": tmp / "videos"}
    env = dict(os.environ, PYTHON=sys.executable, HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), CUDA_VISIBLE_DEVICES="")
    for key in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "MANIFEST", "RUN", "CKPT", "OUT", "ENCODER", "ARGS"):
        env.pop(key, None)  # make would take them from the environment
    if not fast:
        sys.path.insert(0, str(ROOT))
        import demo
        snapshot = demo.make_tiny_encoder(tmp / "models" / "vjepa2-vitl-fpc64-256")
        install_in_hf_cache(snapshot, tmp / "hf-home", HUB_ID)
        paths["/models/vjepa2-vitl-fpc64-256"] = snapshot
        data = demo.make_demo_data(repo / "data", seed=0)
        shutil.copy(data["fleet"], repo / "data" / "val.jsonl")
        shutil.copy(data["labels"], repo / "data" / "val_labels.jsonl")
        shutil.copy(data["fleet"], repo / "data" / "manifest.jsonl")
    return paths, env


# ---- running them ----

def run_all(steps, paths, env, cwd, log=print):
    """Run the planned commands; returns [(line, command, status)] with status 'ok', 'skip: why' or 'FAIL
    ...'."""
    results, array = [], None
    for number, cmd, run, reason in steps:
        if cmd.startswith("#SBATCH"):
            m = re.search(r"--array=(\d+)-(\d+)", cmd)
            array = range(int(m.group(1)), int(m.group(2)) + 1) if m else None
        if run is None:
            log(f"skip     README:{number}: {cmd}\n         ({reason})")
            results.append((number, cmd, f"skip: {reason}"))
            continue
        for literal, stand_in in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            run = run.replace(literal, str(stand_in))
        left = PLACEHOLDER.search(run.replace("../shared", ""))
        if left:
            status = (f"FAIL: placeholder {left.group(0)!r} left; "
                      f"add it to SUBSTITUTIONS or SKIP in {__file__}")
            log(f"FAIL     README:{number}: {cmd}\n         {status}")
            results.append((number, cmd, status))
            continue
        ids = list(array) if "SLURM_ARRAY_TASK_ID" in run and array else [None]
        t0, status = time.time(), "ok"
        for task in ids:
            extra = {} if task is None else {"SLURM_ARRAY_TASK_ID": str(task)}
            proc = subprocess.run(["bash", "-c", run], cwd=cwd, env=dict(env, **extra), capture_output=True,
                                  text=True, timeout=900)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                status = f"FAIL: exit {proc.returncode}" + (f" (task {task})" if task is not None else "")
                status += "\n" + "\n".join("         | " + ln for ln in tail.splitlines())
                break
        runs = f" x{len(ids)}" if len(ids) > 1 else ""
        log(f"{'ok' if status == 'ok' else 'FAIL':8} README:{number}: {cmd}  [{time.time() - t0:.0f} s{runs}]"
            + ("" if status == "ok" else "\n" + status))
        results.append((number, cmd, status))
    return results


def walk(readme=ROOT / "README.md", fast=False, keep=False, log=print):
    """Plan, build the stand-ins, run; returns the results (see run_all)."""
    steps = plan(Path(readme).read_text(encoding="utf-8"), fast)
    tmp = Path(tempfile.mkdtemp(prefix="readme-walk-"))
    try:
        paths, env = stand_ins(tmp, fast)
        log(f"walking {readme} in {tmp / 'repo'} ({'fast' if fast else 'every example'})")
        return run_all(steps, paths, env, tmp / "repo", log)
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="run only the examples that need no encoder")
    p.add_argument("--list", action="store_true", help="print what would run or be skipped, run nothing")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="the Markdown file to walk")
    args = p.parse_args(argv)
    if args.list:
        for number, cmd, run, reason in plan(Path(args.readme).read_text(encoding="utf-8"), args.fast):
            print(f"README:{number}: {cmd}\n    " + (f"skip: {reason}" if run is None else f"runs: {run}"))
        return 0
    results = walk(args.readme, args.fast, args.keep)
    failed = [r for r in results if r[2].startswith("FAIL")]
    ran = sum(r[2] == "ok" for r in results)
    print(f"{ran} example(s) ran, {len(results) - ran - len(failed)} skipped, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
