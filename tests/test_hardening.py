"""Hardening, one test per class: no hang on special files, no clobbered file, one writer at a time, memory
bounded per clip, label mismatches, --features isolation, every error one line, messages that tell the
truth."""
import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import eval as evaluation
import cli
import infer
import jepa
import learn
import report
import sample_labels
import selection
import train
from conftest import CHUNK, run_script, write_jsonl
from manifest import check_frames, read_manifest
from test_learn import fleet
from test_selection import write_inputs

FIXED = ["--set", "data.num_workers=0"]


def clip_rows(tmp_path, frames):
    """A manifest with one clip per frame list; returns its path."""
    return write_jsonl(tmp_path / "m.jsonl", [{"clip_id": f"c{i}", "scene": "s",
                                               "frame_paths": list(map(str, f))}
                                              for i, f in enumerate(frames)])


# ---- 1. hangs: only regular files are frames ----

def test_fifo_frame_is_an_error_record_not_a_hang(tmp_path, reference, tiny_encoder, demo_data):
    good = read_manifest(demo_data)[0]["frames"][:2]
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    manifest = clip_rows(tmp_path, [good, [good[0], fifo], good])
    out = tmp_path / "s.jsonl"
    proc = run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", manifest, "--encoder",
                      tiny_encoder, "--output", out, *FIXED)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert proc.returncode == 1 and [r["score"] is None for r in rows] == [False, True, False]
    assert "not a regular file but a named pipe (FIFO)" in rows[1]["error"]
    with pytest.raises(cli.UserError,
                       match=r"m.jsonl:2: frame .*pipe.jpg: not a regular file but a named pipe"):
        check_frames(read_manifest(manifest), manifest)
    assert cli.special_file_problem("/dev/zero") == "not a regular file but a character device"


# ---- 2. clobbering: outputs are regular files, never an input ----

def test_outputs_never_replace_special_files_inputs_or_symlinks(tmp_path, reference, tiny_encoder, demo_data):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    for special in (fifo, "/dev/null"):
        with pytest.raises(cli.UserError, match="is not a regular file"):
            cli.atomic_write_text(special, "x")
    assert fifo.exists() and not fifo.is_file() and os.path.exists("/dev/null")
    with pytest.raises(cli.UserError, match="is a folder; pass a file path"):
        cli.atomic_write_text(tmp_path, "x")

    target = tmp_path / "real.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    cli.atomic_write_text(tmp_path / "link.json", "new")  # written through: the link stays a link
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == "new"

    ckpt_copy = tmp_path / "best.pt"
    shutil.copy(reference / "best.pt", ckpt_copy)
    before = ckpt_copy.read_bytes()
    for output, flag in ((ckpt_copy, "--checkpoint"), (demo_data, "--manifest")):
        proc = run_script("eval.py", "--checkpoint", ckpt_copy, "--manifest", demo_data, "--encoder",
                          tiny_encoder, "--output", output)
        assert proc.returncode == 2 and f"is also this command's {flag}" in proc.stderr
    proc = run_script("infer.py", "--checkpoint", ckpt_copy, "--manifest", demo_data, "--output", demo_data)
    assert proc.returncode == 2 and "is also this command's --manifest" in proc.stderr
    assert ckpt_copy.read_bytes() == before


# ---- 3. two writers ----

def test_second_writer_is_refused_naming_the_first(tmp_path, reference, tiny_encoder, demo_data):
    out = tmp_path / "s.jsonl"
    with cli.exclusive_lock(tmp_path / ".s.jsonl.lock", "test"):  # as a running infer.py holds it
        proc = run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data,
                          "--encoder", tiny_encoder, "--output", out, "--shard", "1/3")
        assert proc.returncode == 2 and f"being written by another process (pid {os.getpid()}" in proc.stderr
        run = tmp_path / "run"
        shutil.copytree(reference, run)
        with cli.exclusive_lock(run / ".lock", "test"):
            with pytest.raises(cli.UserError, match="run folder .*run is being written by another process"):
                train.main(["--run-dir", str(run), "--resume", "--encoder", str(tiny_encoder),
                            "--manifest", str(demo_data), "--epochs", "6"])
    assert not out.exists() and json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 4
    # the lock dies with its holder: a rerun after the holder is gone goes through
    assert run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data, "--encoder",
                      tiny_encoder, "--output", out, "--shard", "1/3").returncode == 0


# ---- 4. memory bounded per clip ----

def test_long_clip_is_decoded_in_bounded_slices_with_identical_results(tmp_path, tiny_encoder, demo_data,
                                                                       monkeypatch):
    frames = [f for r in read_manifest(demo_data)[:8] for f in r["frames"]]  # one 64-frame "drive"
    cfg = cli.load_config(None, ["data.num_workers=0"])
    encoder = jepa.VJEPAEncoder(str(tiny_encoder))
    clips = [{"clip_id": "long", "frames": frames}, {"clip_id": "short", "frames": frames[:6]}]
    in_flight, peak = [0], [0]
    real_load = jepa.load_frame

    def counting_load(path, size):  # frames decoded for the item being built
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        return real_load(path, size)

    real_getitem = jepa.JEPADataset.__getitem__

    def getitem(self, j):
        item = real_getitem(self, j)
        in_flight[0] = 0  # the item is built; the next one decodes afresh
        return item

    monkeypatch.setattr(jepa, "load_frame", counting_load)
    monkeypatch.setattr(jepa.JEPADataset, "__getitem__", getitem)
    sliced = list(jepa.encode_stream(encoder, jepa.JEPADataset(clips, cfg, encoder.processor), 8, 0))
    assert peak[0] == jepa.SLICE_TUBELETS * 2  # 16 frames at a time, not 64
    whole = list(jepa.encode_stream(encoder,
                                    jepa.JEPADataset(clips, cfg, encoder.processor, slice_tubelets=64), 8, 0))
    assert [len(c.clean_emb) for c in sliced] == [32, 3]
    for a, b in zip(sliced, whole):  # the same batches, so bit-identical embeddings
        assert torch.equal(a.clean_emb, b.clean_emb) and torch.equal(a.masked_emb, b.masked_emb)
    assert jepa.JEPADataset(clips, cfg, slice_tubelets=8).__len__() == 4 + 1


# ---- 5. silent mismatches ----

def test_labels_that_match_no_clip_are_an_error_and_few_a_warning(tmp_path, capsys):
    records = [{"clip_id": f"c{i}"} for i in range(4)]
    with pytest.raises(cli.UserError, match=r"l.jsonl: none of its 2 clip_ids is in m.jsonl; e.g. the labels "
                                             r"have 'x0', the manifest has 'c0'"):
        evaluation.check_label_overlap({"x0": 1, "x1": 0}, records, "l.jsonl", "m.jsonl")
    evaluation.check_label_overlap({"c0": 1, "x1": 0, "x2": 0}, records, "l.jsonl", "m.jsonl")
    assert "warning: l.jsonl: only 1 of its 3 clip_ids are in m.jsonl" in capsys.readouterr().err


def test_derived_clip_id_rule_is_printed_by_check(tmp_path):
    img = tmp_path / "a.jpg"
    Image.new("RGB", (32, 32)).save(img)
    m = write_jsonl(tmp_path / "m.jsonl", [{"scene_id": "s", "frames": ["a.jpg", "a.jpg"]}])
    proc = run_script("manifest.py", "check", "--manifest", m)
    assert (proc.returncode == 0 and "SCENE__CAMERA__HASH" in proc.stdout
            and "seeds the clip's masks" in proc.stdout)


# ---- 6. --features from another run: read-only, reuse what matches ----

def test_features_from_another_run_are_never_written(tmp_path, tiny_encoder, demo_data, reference):
    source = tmp_path / "src"
    shutil.copytree(reference, source)
    (source / "features" / "chunk_00003.pt").unlink()  # a partly encoded source: clips 12-14 missing
    before = {p.name: p.read_bytes() for p in (source / "features").iterdir()}
    train.main(["--manifest", str(demo_data), "--encoder", str(tiny_encoder), "--run-dir",
                str(tmp_path / "new"), "--epochs", "4", "--features", str(source), *CHUNK[:2], "--set",
                "training.encode_chunk_clips=5"])
    assert {p.name: p.read_bytes() for p in (source / "features").iterdir()} == before
    own = sorted(p.name for p in (tmp_path / "new" / "features").glob("chunk_*.pt"))
    assert own == ["chunk_00000.pt"]  # only the 3 missing clips, encoded into the new run's own folder
    got, ref = (jepa.load_checkpoint(d / "last.pt")["model_state"] for d in (tmp_path / "new", reference))
    assert all(torch.allclose(got[k], ref[k], atol=1e-6) for k in ref)


def test_corrupt_feature_files_are_named_with_the_fix(tmp_path, tiny_encoder, demo_data, reference):
    run = tmp_path / "r"
    shutil.copytree(reference, run)
    args = ["--manifest", str(demo_data), "--encoder", str(tiny_encoder), "--run-dir", str(run), "--resume"]
    (run / "features" / "chunk_00001.pt").write_bytes(b"torn")
    with pytest.raises(cli.UserError, match=r"chunk_00001.pt: corrupt feature chunk .*delete it and rerun"):
        train.main(args)
    (run / "features" / "fingerprint.json").write_text("{")
    with pytest.raises(cli.UserError, match=r"fingerprint.json: unreadable or corrupt; delete .*features"):
        train.main(args)


# ---- every error one line ----

@pytest.mark.parametrize("extra, message", [
    (["--set", "training.lr=[1e-3"], "--set training.lr=[1e-3: the value is not valid YAML"),
    (["--seed", "1" * 30], "config key seed = 1111"),
    (["--device", "mps"], "--device mps: Apple MPS is not available here"),
])
def test_bad_flags_are_one_line(tmp_path, tiny_encoder, demo_data, extra, message):
    if extra[0] == "--device" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    proc = run_script("train.py", "--manifest", demo_data, "--encoder", tiny_encoder, "--run-dir",
                      tmp_path / "r", *extra)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_run_dir_that_is_a_file(tmp_path, tiny_encoder, demo_data):
    (tmp_path / "f").write_text("")
    with pytest.raises(cli.UserError, match="--run-dir .*f: is a file, not a folder"):
        train.main(["--manifest", str(demo_data), "--run-dir", str(tmp_path / "f")])


@pytest.mark.parametrize("corrupt, message", [
    (lambda c: c.update(config="text"), r"config missing or malformed"),
    (lambda c: c.update(format_version="1"), r"format_version missing or malformed"),
    (lambda c: c["model_state"].update({"norm.weight": torch.zeros(3)}), r"its weights do not fit the head"),
    (lambda c: c["model_state"]["norm.weight"].fill_(float("nan")), r"weights norm.weight hold NaN"),
    (lambda c: c["config"]["data"].update(tubelet_size="two"), r"data.tubelet_size must be int"),
])
def test_malformed_checkpoints_are_one_line(tmp_path, reference, tiny_encoder, demo_data, corrupt, message):
    ckpt = torch.load(reference / "best.pt", weights_only=True)
    corrupt(ckpt)
    torch.save(ckpt, tmp_path / "bad.pt")
    proc = run_script("eval.py", "--checkpoint", tmp_path / "bad.pt", "--manifest", demo_data, "--encoder",
                      tiny_encoder, "--output", tmp_path / "e.json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path / 'bad.pt'}: ") and len(proc.stderr.splitlines()) == 1
    assert __import__("re").search(message, proc.stderr)


def test_read_only_folder_write_is_one_line(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("builtins.open", read_only)
    monkeypatch.setattr(type(tmp_path), "unlink", read_only)  # the cleanup fails too on a read-only folder
    with pytest.raises(cli.UserError, match=r"cannot write .*x.json: Read-only file system; choose another"):
        cli.atomic_write_text(tmp_path / "x.json", "{}")


# ---- messages that tell the truth ----

def test_interrupt_messages_and_bom(tmp_path, capsys, demo_data):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        cli.run_cli(interrupted, on_interrupt="complete lines are kept; run the same command again")
    assert e.value.code == 130 and "complete lines are kept" in capsys.readouterr().err
    for script, words in (("infer.py", "complete lines are kept"), ("eval.py", "nothing was written"),
                          ("train.py", "continue with --resume")):
        assert words in (jepa.Path(__file__).parents[1] / script).read_text()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + demo_data.read_bytes())
    assert [r["clip_id"] for r in read_manifest(bom, demo_data.parent)] == \
        [r["clip_id"] for r in read_manifest(demo_data)]


def test_output_that_is_a_folder_and_float_tiff(tmp_path, reference, tiny_encoder, demo_data):
    proc = run_script("eval.py", "--checkpoint", reference / "best.pt", "--manifest", demo_data, "--encoder",
                      tiny_encoder, "--output", tmp_path)
    assert proc.returncode == 2 and "is a folder; pass a file path" in proc.stderr
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    assert jepa.load_frame(tmp_path / "f.tif", 8).mean() == pytest.approx(127, abs=1)  # not black


def test_report_never_hangs_clobbers_or_tracebacks(tmp_path, scored, demo_data):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    rows = [json.loads(x) for x in scored.read_text().splitlines()]
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": r["clip_id"], "frame_paths": [str(fifo)] * 2}
                                                   for r in rows])
    proc = run_script("report.py", "--scores", scored, "--manifest", manifest, "--output",
                      tmp_path / "r.html")
    # the subprocess timeout would catch a hang
    assert proc.returncode == 0 and (tmp_path / "r.html").exists()
    before = scored.read_bytes()
    proc = run_script("report.py", "--scores", scored, "--output", scored)
    assert (proc.returncode == 2 and "is also this command's --scores" in proc.stderr
            and scored.read_bytes() == before)
    for edit, words in (({"scene": ["a"]}, "scene and camera text"),
                        ({"score": int("9" * 400)}, "too large")):
        bad = write_jsonl(tmp_path / "bad.jsonl", [dict(rows[0], **edit)])
        proc = run_script("report.py", "--scores", bad, "--output", tmp_path / "b.html")
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr


def test_full_disk_is_found_before_encoding(tmp_path, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 4096  # 40 KB free

    monkeypatch.setattr(cli.os, "statvfs", lambda _: Tiny)
    with pytest.raises(cli.UserError, match=r"out.jsonl: only 0 MB free in .*, about 5 MB needed; free some"):
        cli.check_output(tmp_path / "out.jsonl", needed_bytes=5 << 20)


def test_check_warns_about_exif_rotated_frames(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": fed as stored, i.e. sideways
    for name, kwargs in (("rotated.jpg", {"exif": exif}), ("upright.jpg", {})):
        Image.new("RGB", (32, 16)).save(tmp_path / name, **kwargs)
    m = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": "a", "frames": ["rotated.jpg", "upright.jpg"]}])
    proc = run_script("manifest.py", "check", "--manifest", m)
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "rotated.jpg: EXIF orientation 6 is ignored" in warnings[0]


def test_queue_keeps_no_pixels_of_encoded_slices_so_a_long_clip_stays_flat(monkeypatch):
    crop, t, batch = 256, 2, 12  # the real encoder's processor crop

    def slices(frames):  # one clip of `frames` frames, as the loader hands it over after the processor
        tubelets = frames // t
        for start in range(0, tubelets, jepa.SLICE_TUBELETS):
            n = min(jepa.SLICE_TUBELETS, tubelets - start)
            yield jepa.TubeletSlice(0, start, start + n == tubelets, torch.rand(n, t, 3, crop, crop),
                                    torch.rand(n, t, 3, crop, crop), torch.full((n,), 0.75), None)

    def pixel_bytes(obj, seen):  # bytes of 5-d (pixel) tensors reachable from the queue's state
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if obj.dim() == 5 and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                return storage.nbytes()
            return 0
        if isinstance(obj, (list, tuple, deque_type)):
            return sum(pixel_bytes(x, seen) for x in obj)
        return 0

    deque_type = type(jepa.deque())
    peak = [0]

    class Probe(jepa._EncodeQueue):
        def measure(self):
            peak[0] = max(peak[0], pixel_bytes(list(vars(self).values()), set()))

        def add(self, item):
            super().add(item)
            self.measure()

        def finished_clips(self):  # after a slice is added and full batches are encoded
            self.measure()
            yield from super().finished_clips()

    def encoder(x):
        return x.mean(dim=(1, 2, 3, 4))[:, None].expand(-1, 16).clone()

    monkeypatch.setattr(jepa, "_EncodeQueue", Probe)
    peaks = {}
    for frames in (16, 256):
        monkeypatch.setattr(jepa, "make_loader", lambda dataset, workers, f=frames: slices(f))
        peak[0] = 0
        (clip,) = jepa.encode_stream(encoder, None, batch, 0)
        assert len(clip.clean_emb) == len(clip.mask_frac) == frames // t
        peaks[frames] = peak[0]
    # 16 frames: one slice of 8 tubelets; 256: fewer than batch + 8 wait, never the clip's 128
    assert peaks[16] > 0 and peaks[256] <= 3 * peaks[16], peaks


# ---- 6. error lists are capped and summarised by kind ----

def test_check_on_5000_missing_frames_is_capped_and_says_where(tmp_path):
    rows = [{"clip_id": f"c{i}", "frame_paths": [f"/mnt/fleet/drive{i % 3}/f{i}_{k}.jpg" for k in range(2)]}
            for i in range(2500)]
    proc = run_script("manifest.py", "check", "--manifest", write_jsonl(tmp_path / "m.jsonl", rows))
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) < 50 and "Traceback" not in proc.stderr
    assert "error: ... and 4,980 more of the same kind, e.g. " in proc.stderr
    assert "error: 5,000 frame(s) not found under /mnt/fleet/: is it mounted?" in lines
    with pytest.raises(cli.UserError) as e:  # train.py and eval.py share the cap
        check_frames(read_manifest(tmp_path / "m.jsonl"), tmp_path / "m.jsonl")
    message = str(e.value)
    assert len(message.splitlines()) < 50 and "5,000 frame(s) not found under /mnt/fleet/" in message


def test_frames_resolved_against_the_wrong_root_name_the_right_one(tmp_path):
    data = tmp_path / "nuscenes" / "samples" / "CAM_FRONT"
    data.mkdir(parents=True)
    rows = []
    for i in range(30):
        names = [f"samples/CAM_FRONT/f{i}_{k}.jpg" for k in range(2)]
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / "nuscenes" / name)
        rows.append({"clip_id": f"c{i}", "frame_paths": names})
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)  # relative to the data root, checked without it
    with pytest.raises(cli.UserError, match=rf"60 frame\(s\) not found under {tmp_path}/samples/CAM_FRONT/: "
                                             rf"the frames are under {tmp_path}/nuscenes: "
                                             rf"pass DATA_ROOT={tmp_path}/nuscenes"):
        check_frames(read_manifest(manifest), manifest)
    check_frames(read_manifest(manifest, tmp_path / "nuscenes"), manifest)  # with it: fine


def test_5000_bad_label_lines_are_capped_and_counted(tmp_path):
    labels = write_jsonl(tmp_path / "l.jsonl",
                         [{"clip_id": f"c{i}", "binary_label": "yes"} for i in range(5000)])
    with pytest.raises(cli.UserError) as e:
        evaluation.read_labels(labels)
    lines = str(e.value).splitlines()
    assert len(lines) < 50 and lines[0] == f"{labels}:1: binary_label must be 0, 1 or null, got 'yes'"
    assert lines[-1].startswith(f"... and 4,980 more of the same kind, e.g. {labels}:21: binary_label")


# ---- 7. a kill between the files of a set never leaves a new file beside an old one ----

def test_kill_between_the_files_of_a_set_leaves_no_mismatched_pair(tmp_path, slurm_shards, demo_data, scored):
    merged = tmp_path / "merged.jsonl"
    for suffix in ("", ".emb.npy", ".meta.json"):  # an earlier merge's set, from other scores
        Path(f"{merged}{suffix}").write_bytes(b"old")
    # killed once the new rows file is in place, before its lines file replaces the old one
    killed = run_script("infer.py", "--merge", *slurm_shards[0], "--manifest", demo_data, "--output", merged,
                        env={"JEPA_TEST_KILL_AT": f"atomic_write:{merged.name}"})
    assert killed.returncode == -9
    assert not merged.exists() and not Path(f"{merged}.meta.json").exists()
    run_script("infer.py", "--merge", *slurm_shards[0], "--manifest", demo_data, "--output", merged,
               check=True)
    assert merged.read_bytes() == scored.read_bytes()  # the rerun writes the whole set
    sel = tmp_path / "sel.jsonl"
    for path in (sel, sel.with_suffix(".csv"), Path(f"{sel}.meta.json")):
        path.write_text("old")
    killed = run_script("selection.py", "select", "--scores", merged, "--output", sel,
                        env={"JEPA_TEST_KILL_AT": "atomic_write:sel.csv"})
    assert killed.returncode == -9 and sel.read_text() != "old"
    assert not sel.with_suffix(".csv").exists() and not Path(f"{sel}.meta.json").exists()


def test_kill_between_the_files_of_learn_and_sample_for_labels_leaves_no_mismatched_pair(tmp_path):
    scores, _, y = fleet(folder=tmp_path)
    labels = write_jsonl(tmp_path / "l.jsonl", [{"clip_id": f"c{i:03d}", "binary_label": int(y[i])}
                                                for i in range(0, 60, 2)])
    probe, sample = tmp_path / "p.jsonl", tmp_path / "ls.jsonl"
    sets = {probe: (probe, Path(f"{probe}.probe.npz"), Path(f"{probe}.meta.json")),
            sample: (sample, sample.with_suffix(".csv"))}
    for path in (*sets[probe], *sets[sample]):  # an earlier run's sets
        path.write_text("old")
    # learn: killed once the new p_interesting is in place, before its probe replaces the old one
    killed = run_script("learn.py", "fit", "--scores", scores, "--labels", labels, "--output", probe,
                        env={"JEPA_TEST_KILL_AT": "atomic_write:p.jsonl.probe.npz"})
    assert killed.returncode == -9 and probe.read_text() != "old"
    assert [q.exists() for q in sets[probe][1:]] == [False, False]
    # sample-for-labels: a new sample beside the old CSV would send reviewers other clips than the template
    killed = run_script("sample_labels.py", "--scores", scores, "--n", "10", "--output", sample,
                        env={"JEPA_TEST_KILL_AT": "atomic_write:ls.csv"})
    assert killed.returncode == -9 and sample.read_text() != "old" and not sample.with_suffix(".csv").exists()
    run_script("sample_labels.py", "--scores", scores, "--n", "10", "--output", sample, check=True)
    assert len(sample.with_suffix(".csv").read_text().splitlines()) == 11  # the rerun writes the whole set


# ---- 8. hand-edited lines: numbers no float holds, nesting no parser follows, wrong types, huge lines ----

def test_hand_edited_lines_are_one_line_errors_in_every_reader(tmp_path):
    scores = write_inputs(tmp_path, [(f"c{i}", f"s{i % 3}", i / 10, [1.0, i, 0.0]) for i in range(6)])
    lines = scores.read_text().splitlines(keepends=True)
    labels = write_jsonl(tmp_path / "l.jsonl", [{"clip_id": "c0", "binary_label": 1}])
    readers = {
        "select": lambda: selection.main(["select", "--scores", str(scores), "--output",
                                          str(tmp_path / "s")]),
        "sample": lambda: sample_labels.main(["--scores", str(scores), "--output",
                                              str(tmp_path / "ls.jsonl")]),
        "learn": lambda: learn.main(["fit", "--scores", str(scores), "--labels", str(labels), "--output",
                                     str(tmp_path / "p.jsonl")]),
        "report": lambda: report.read_scores(scores)}
    for bad in ('{"clip_id": "c2", "score": 9' + "9" * 400 + "}\n",  # no float holds it
                '{"clip_id": "c2", "score": 9' + "9" * 5000 + "}\n",  # Python refuses to parse it
                "[" * 100000 + "\n",  # RecursionError in json
                lines[2].replace('"scene": "s2"', '"scene": ["s2"]')):
        scores.write_text("".join(lines[:2] + [bad] + lines[3:]))
        for name, read in readers.items():
            if name in ("select", "learn") and '["s2"]' in bad:
                continue  # select and learn only group by scene: any JSON value is a name there
            with pytest.raises(cli.UserError, match=rf"^{scores}:3: "):
                read()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("s", "ls", "p")) and p != scores
                and not p.name.startswith("scores")]
    proc = run_script("sample_labels.py", "--scores", scores, "--output", tmp_path / "ls.jsonl")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    labels.write_text('{"clip_id": "c0", "binary_label": 1}\n' + "[" * 100000 + "\n")
    with pytest.raises(cli.UserError, match=rf"^{labels}:2: not JSON this reader accepts \(nested too deep"):
        evaluation.read_labels(labels)
    assert infer.parse_row(b'{"clip_id": "c0", "score": 9' + b"9" * 5000 + b"}\n") == {}  # merge: torn line
    picks = write_jsonl(tmp_path / "sel.jsonl", [{"rank": 1, "clip_id": "c0", "score": 0.5,
                                                  "near_duplicates": 5}])
    with pytest.raises(cli.UserError, match=rf"^{picks}:1: near_duplicates must be a list"):
        evaluation.selected_clip_ids(picks)
    # the review page: one Infinity tubelet used to set every chart's scale (NaN bars), and a line of 100,000
    # tubelets drew 100,000 bars per chart (a 2M-tubelet line gave a 420 MB page)
    rows = [json.loads(line) for line in lines]
    rows[1]["tubelet_scores"], rows[2]["tubelet_scores"] = [0.1, float("inf")], [0.2] * 100000
    rows[2]["tubelet_scores"][76543] = 0.9
    page = tmp_path / "r.html"
    report.main(["--scores", str(write_jsonl(scores, rows)), "--output", str(page)])
    text = page.read_text()
    assert '="nan"' not in text and len(text) < 400_000
    assert "peak t76543" in text and "a tubelet score is not finite" in text


# ---- 9. crafted embeddings files: empty, or a NaN/inf row under a clip that has a score ----

def fitted_probe(tmp_path):
    """(scores, labels, probe OUT) of a probe fitted on every other clip of test_learn's synthetic fleet."""
    scores, _, y = fleet(folder=tmp_path)
    labels = write_jsonl(tmp_path / "l.jsonl", [{"clip_id": f"c{i:03d}", "binary_label": int(y[i])}
                                                for i in range(0, 60, 2)])
    out = tmp_path / "p.jsonl"
    learn.main(["fit", "--scores", str(scores), "--labels", str(labels), "--output", str(out)])
    return scores, labels, out


def test_crafted_embeddings_are_one_line_errors_before_anything_is_written(tmp_path):
    scores, labels, out = fitted_probe(tmp_path)
    emb_path = Path(f"{scores}.emb.npy")
    good = np.load(emb_path)
    fit = ["fit", "--scores", str(scores), "--labels", str(labels), "--output", str(tmp_path / "q.jsonl")]
    apply = ["apply", "--probe", f"{out}.probe.npz", "--scores", str(scores), "--output", str(tmp_path / "a")]
    emb_path.write_bytes(b"")  # was an EOFError traceback
    for argv in (fit, apply):
        with pytest.raises(cli.UserError, match=rf"^{emb_path}: not a readable .npy file .*score the clips"):
            learn.main(argv)
    np.save(emb_path, np.zeros((60, 0), np.float32))  # 0-d rows: a ZeroDivisionError traceback
    meta = Path(f"{scores}.meta.json")
    kept = meta.read_text()
    meta.unlink()  # without the embed_dim to compare with
    similar = ["similar", "--scores", str(scores), "--clip", "c001", "--output", str(tmp_path / "a")]
    for argv in (fit, similar):
        with pytest.raises(cli.UserError, match=rf"^{emb_path}: expected a C-ordered \(N, D\) float32 "
                                                 rf"array, got float32 \(60, 0\)"):
            (learn if argv is fit else selection).main(argv)
    meta.write_text(kept)
    # an inf in an unlabelled scored clip's row used to give p_interesting null with exit 0
    for row, argv in ((1, fit), (2, apply)):
        bad = good.copy()
        bad[row, 0] = np.inf
        np.save(emb_path, bad)
        with pytest.raises(cli.UserError, match=rf"^{emb_path}: row {row} is not finite but "
                                                 rf"{scores}:{row + 1} has a score; use the two files"):
            learn.main(argv)
    assert not (tmp_path / "q.jsonl").exists() and not (tmp_path / "a").exists()


# ---- 10. crafted probe files: damaged weights, a p_interesting file of other scores, the wrong file ----

def test_crafted_probe_files_are_one_line_errors(tmp_path):
    scores, labels, out = fitted_probe(tmp_path)
    npz = Path(f"{out}.probe.npz")
    good = dict(np.load(npz))
    apply = ["apply", "--probe", str(npz), "--scores", str(scores), "--output", str(tmp_path / "a.jsonl")]
    for edit, words in ((lambda z: z["weights"].__setitem__(0, np.nan), "holds NaN, infinity or a std <= 0"),
                        (lambda z: z["std"].fill(0), "holds NaN, infinity or a std <= 0"),
                        (lambda z: z.update(mean=z["mean"][:3]), "float vectors of one length"),
                        (lambda z: z.update(bias=np.zeros(2)), "bias a float")):
        probe = {k: v.copy() for k, v in good.items()}
        edit(probe)  # NaN weights and std 0 used to write p_interesting null (or inf) for every clip, exit 0
        np.savez(npz, **probe)
        with pytest.raises(cli.UserError, match=rf"^{npz}: .*{words}"):
            learn.main(apply)
    npz.write_bytes(npz.read_bytes()[:300])  # torn: a zipfile.BadZipFile traceback before
    with pytest.raises(cli.UserError, match=rf"^{npz}: not a probe file \(File is not a zip file\)"):
        learn.main(apply)
    assert not (tmp_path / "a.jsonl").exists()

    select = ["select", "--scores", str(scores), "--output", str(tmp_path / "sel.jsonl"), "--rank-by",
              "probe"]
    with pytest.raises(cli.UserError, match=rf"^{npz}: is the probe's weights; pass the p_interesting JSONL"):
        selection.main([*select, "--probe", str(npz)])  # was 20 lines of "not UTF-8 text"
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:5]))  # a probe of other, fewer scores
    with pytest.raises(cli.UserError, match=rf"^{out}: no p_interesting for 55 of the 60 scored clips "
                                             rf"of {scores} \(e.g. 'c005'\), so it was written for other"):
        selection.main([*select, "--probe", str(out)])  # picked 2 clips, saying the other 55 were folded
    assert not (tmp_path / "sel.jsonl").exists()


# ---- 11. a damaged last.pt on --resume: one line with the fix, nothing trained from it ----

@pytest.mark.parametrize("damage, words", [
    (lambda path: path.write_bytes(path.read_bytes()[:2000]), r"not a jepa-clips checkpoint .*; to resume, "),
    (lambda path: torch.save(dict(torch.load(path, weights_only=True), best_metric=float("nan")), path),
     r"cannot resume from it \(epoch 4, best_metric nan"),
    (lambda path: torch.save(dict(torch.load(path), model_state={
        k: torch.full_like(v, float("nan")) for k, v in torch.load(path)["model_state"].items()}), path),
     r"its weights or optimizer state hold NaN or infinity; "),
])
def test_damaged_resume_checkpoint_is_one_line_and_the_run_is_untouched(tmp_path, reference, tiny_encoder,
                                                                        demo_data, damage, words):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    damage(run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".jsonl")}
    # a NaN best_metric used to train on and never write best.pt again; NaN weights stopped at the first
    # batch saying "the last good checkpoint last.pt is intact"
    with pytest.raises(cli.UserError, match=rf"^{run / 'last.pt'}: {words}.*restore it from epoch_NNN.pt"):
        train.main(["--run-dir", str(run), "--resume", "--encoder", str(tiny_encoder), "--epochs", "6",
                    *FIXED])
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".pt", ".jsonl")} == before


# ---- 12. a full disk mid-write: one line naming the file, the earlier output intact, no temp file ----

def test_full_disk_mid_write_is_one_line_and_keeps_what_was_there(tmp_path, reference, tiny_encoder,
                                                                   monkeypatch):
    real_open = open

    def full_disk_for(name, modes):
        def fake_open(path, mode="r", *args, **kwargs):
            f = real_open(path, mode, *args, **kwargs)
            if name in str(path) and mode in modes:
                f.close()
                raise OSError(errno.ENOSPC, "No space left on device")
            return f
        monkeypatch.setattr("builtins.open", fake_open)

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    last = (run / "last.pt").read_bytes()
    full_disk_for("metrics.jsonl", ("a",))  # the per-epoch append was a traceback
    with pytest.raises(cli.UserError, match=rf"^cannot write {run / 'metrics.jsonl'}: No space left on "
                                             rf"device; free space, then continue with --resume"):
        train.main(["--run-dir", str(run), "--resume", "--encoder", str(tiny_encoder), "--epochs", "5",
                    *FIXED])
    assert (run / "last.pt").read_bytes() == last
    scores = write_inputs(tmp_path, [(f"c{i}", "s", i / 10, [1.0, i, 0.0]) for i in range(4)])
    similar = tmp_path / "similar.jsonl"
    similar.write_text("earlier\n")
    full_disk_for("similar.jsonl", ("wb",))
    with pytest.raises(cli.UserError, match=rf"^cannot write {similar}: No space left on device; free space"):
        selection.main(["similar", "--scores", str(scores), "--clip", "c1", "--output", str(similar)])
    assert similar.read_text() == "earlier\n" and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


# ---- 13. absurd sizes on the command line: TOP=10**20 is "all of them", not an allocation ----

def test_a_huge_top_picks_what_there_is(tmp_path):
    scores = write_inputs(tmp_path, [(f"c{i}", f"s{i}", i / 10, [1.0, i, 0.0]) for i in range(6)])
    out = tmp_path / "sel.jsonl"  # np.empty((TOP, D)) was a "Maximum allowed dimension exceeded" traceback
    selection.main(["select", "--scores", str(scores), "--output", str(out), "--top", str(10 ** 20), "--set",
                    "selection.max_similarity=1"])
    assert len(out.read_text().splitlines()) == 6


# ---- 14. crafted manifest timestamps: NaN, infinity, 400-digit integers ----

def test_crafted_timestamps_are_no_times_not_a_traceback(tmp_path, scored, demo_data):
    rows = [json.loads(line) for line in demo_data.read_text().splitlines()]
    stamps = [int("9" * 400), float("nan"), float("inf"), 1e300]
    for i, r in enumerate(rows):  # a 400-digit stamp was an OverflowError, NaN a ValueError in report.py
        r["timestamps"] = [stamps[i % 4]] * len(r["frame_paths"])
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    where = ["--manifest", str(manifest), "--data-root", str(demo_data.parent)]
    sel = tmp_path / "sel.jsonl"
    selection.main(["select", "--scores", str(scored), "--output", str(sel), "--top", "4", *where])
    picks = [json.loads(line) for line in sel.read_text().splitlines()]  # NaN there was not JSON
    assert picks and all(p["first_timestamp"] is None and p["last_frame"] for p in picks)
    report.main(["--scores", str(scored), "--selection", str(sel), "--output", str(tmp_path / "r.html"),
                 "--top", "15", *where])
    assert "no timestamps" in (tmp_path / "r.html").read_text()
