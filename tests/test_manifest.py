"""manifest.py: exact manifests from a small schema-faithful nuScenes tree (two scenes, six cameras, key
frames and sweeps, real token linkage, shuffled tables) and from frame folders; partial downloads, natural
sort, splits, user errors, and `check` messages. Tiny real JPEGs; no network, a few seconds."""
import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

import cli
import manifest
from conftest import run_script

CAMERAS = ["CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT"]
LOGS = {"scene-0061": ("n015-2018-07-24-11-22-45+0800", 1532402927647951),
        "scene-0103": ("n008-2018-08-01-15-16-36-0400", 1533151603547590)}
KEY_OFFSETS = [0, 499870, 1000210, 1549790]  # µs after the scene start: uneven, as real key frames are
# every CAM_FRONT frame of scene-0061 in time order: a leading sweep, 4 key frames with 2 sweeps between,
# a tail sweep
FRONT_0061 = [1532402927564951, 1532402927647951, 1532402927814574, 1532402927981197, 1532402928147821,
              1532402928314601, 1532402928481381, 1532402928648161, 1532402928831354, 1532402929014547,
              1532402929197741, 1532402929287741]
KEYS_0061 = [FRONT_0061[i] for i in (1, 4, 7, 10)]


def tok(*parts):
    return hashlib.md5("|".join(map(str, parts)).encode()).hexdigest()


def jpeg(path, size=(16, 9), color=(90, 120, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def fname(scene, cam, ts, key):
    return f"{'samples' if key else 'sweeps'}/{cam}/{LOGS[scene][0]}__{cam}__{ts}.jpg"


def camera_times(start, cam_index):
    """(timestamp, is_key_frame, key index it belongs to) for one camera of one scene, in time order."""
    keys = [start + off + 10 * cam_index for off in KEY_OFFSETS]  # each camera fires a little after the last
    out = [(keys[0] - 83000, False, 0)]
    for k, ts in enumerate(keys):
        out.append((ts, True, k))
        if k + 1 < len(keys):
            gap = keys[k + 1] - ts
            out += [(ts + gap * j // 3, False, k + 1) for j in (1, 2)]
    return out + [(keys[-1] + 90000, False, len(keys) - 1)]


def make_nuscenes(root, version="v1.0-mini"):
    """Write VERSION/{scene,sample,sample_data,calibrated_sensor,sensor}.json and every camera JPEG under
    root."""
    t = {name: [] for name in manifest.TABLES}
    sensors = CAMERAS + ["LIDAR_TOP"]
    t["sensor"] = [{"token": tok("sensor", s), "channel": s,
                    "modality": "lidar" if s == "LIDAR_TOP" else "camera"}
                   for s in sensors]
    for scene, (log, start) in LOGS.items():
        samples = [tok(scene, "sample", k) for k in range(len(KEY_OFFSETS))]
        t["scene"].append({"token": tok(scene), "log_token": tok(log), "nbr_samples": len(samples),
                           "name": scene, "first_sample_token": samples[0], "last_sample_token": samples[-1],
                           "description": ""})
        for k, s in enumerate(samples):
            t["sample"].append({"token": s, "timestamp": start + KEY_OFFSETS[k], "scene_token": tok(scene),
                                "prev": samples[k - 1] if k else "",
                                "next": samples[k + 1] if k + 1 < len(samples) else ""})
        for i, sensor in enumerate(sensors):
            calib = tok(scene, "calib", sensor)  # one calibration per log and sensor, as in nuScenes
            t["calibrated_sensor"].append({"token": calib, "sensor_token": tok("sensor", sensor),
                                           "translation": [0, 0, 0], "rotation": [1, 0, 0, 0],
                                           "camera_intrinsic": []})
            times = camera_times(start, i)
            # key frames only, never written to disk: must never be picked or counted
            if sensor == "LIDAR_TOP":
                times = [x for x in times if x[1]]
            toks = [tok(scene, sensor, ts) for ts, _, _ in times]
            for j, (ts, key, k) in enumerate(times):
                filename = (f"samples/LIDAR_TOP/{log}__LIDAR_TOP__{ts}.pcd.bin" if sensor == "LIDAR_TOP"
                            else fname(scene, sensor, ts, key))
                t["sample_data"].append({
                    "token": toks[j], "sample_token": samples[k], "ego_pose_token": tok("ego", ts),
                    "calibrated_sensor_token": calib, "timestamp": ts,
                    "fileformat": filename.rsplit(".", 1)[1], "is_key_frame": key, "height": 9, "width": 16,
                    "filename": filename, "prev": toks[j - 1] if j else "",
                    "next": toks[j + 1] if j + 1 < len(toks) else ""})
                if sensor != "LIDAR_TOP":
                    jpeg(root / filename)
    (root / version).mkdir(parents=True)
    for name, rows in t.items():
        random.Random(name).shuffle(rows)  # nothing may depend on table order
        (root / version / f"{name}.json").write_text(json.dumps(rows, indent=0))
    return root


@pytest.fixture(scope="module")
def nusc(tmp_path_factory):
    return make_nuscenes(tmp_path_factory.mktemp("nuscenes"))


def manifest_cli(capsys, *args):
    """`python manifest.py ARGS` in-process (the subprocess form pays a 3 s torch import per call, so only two
    tests use it): returns (exit status, stdout lines, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.run_cli(lambda: manifest.main([str(a) for a in args]))
    out, err = capsys.readouterr()
    return e.value.code, out.splitlines(), err.splitlines()


def build(root, out, *flags, version="v1.0-mini"):
    """Run `manifest.py nuscenes` in-process; returns the manifest's rows."""
    manifest.main(["nuscenes", "--dataroot", str(root), "--version", version, "--output", str(out),
                   *map(str, flags)])
    return [json.loads(line) for line in Path(out).read_text().splitlines()]


def clip(scene, cam, times, split, key=None):
    keys = set(KEYS_0061) if key is None else key
    return {"clip_id": f"{scene}__{cam}__{times[0]}__{times[-1]}", "split": split, "scene_id": scene,
            "camera": cam, "frame_paths": [fname(scene, cam, ts, ts in keys) for ts in times],
            "timestamps": times}


def test_samples_are_key_frames_in_sample_order_with_official_mini_split(nusc, tmp_path):
    rows = build(nusc, tmp_path / "m.jsonl", "--cameras", "CAM_FRONT", "--frames", 2, "--stride", 2)
    keys_0103 = [1533151603547590, 1533151604047460, 1533151604547800, 1533151605097380]
    assert rows == [clip("scene-0061", "CAM_FRONT", KEYS_0061[0:2], "train"),
                    clip("scene-0061", "CAM_FRONT", KEYS_0061[2:4], "train"),
                    clip("scene-0103", "CAM_FRONT", keys_0103[0:2], "val", set(keys_0103)),
                    clip("scene-0103", "CAM_FRONT", keys_0103[2:4], "val", set(keys_0103))]
    assert rows[0]["frame_paths"][0] == ("samples/CAM_FRONT/"
                                         "n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927647951.jpg")


def test_sweeps_follow_the_chain_with_windows_and_dropped_tail(nusc, tmp_path):
    rows = build(nusc, tmp_path / "m.jsonl", "--cameras", "CAM_FRONT", "--frames", 4, "--stride", 3,
                 "--source", "sweeps")
    mine = [r for r in rows if r["scene_id"] == "scene-0061"]
    # 12 frames, windows at 0, 3, 6; frames 9..11 cannot fill a window and are dropped
    assert mine == [clip("scene-0061", "CAM_FRONT", FRONT_0061[s:s + 4], "train") for s in (0, 3, 6)]
    assert mine[0]["frame_paths"][:2] == [
        "sweeps/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927564951.jpg",
        "samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927647951.jpg"]
    assert len(rows) == 6


def test_cameras_resolve_through_calibrated_sensor(nusc, tmp_path):
    tables = manifest.load_tables(nusc, "v1.0-mini")
    channel = manifest.camera_channels(tables)
    assert sorted(set(channel.values())) == sorted(CAMERAS)  # LIDAR_TOP is not a camera
    for row in tables["sample_data"]:
        if "LIDAR" not in row["filename"]:
            assert f"__{channel[row['calibrated_sensor_token']]}__" in row["filename"]
    rows = build(nusc, tmp_path / "m.jsonl", "--cameras", "CAM_BACK,CAM_FRONT_LEFT", "--frames", 4,
                 "--stride", 4)
    assert [(r["scene_id"], r["camera"]) for r in rows] == [
        ("scene-0061", "CAM_BACK"), ("scene-0061", "CAM_FRONT_LEFT"),
        ("scene-0103", "CAM_BACK"), ("scene-0103", "CAM_FRONT_LEFT")]
    assert all(f"/{r['camera']}/" in p for r in rows for p in r["frame_paths"])
    rows = build(nusc, tmp_path / "all.jsonl", "--cameras", "all", "--frames", 4, "--stride", 4, "--source",
                 "sweeps")
    assert [r["camera"] for r in rows[:9:3]] == ["CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT"]
    assert len(rows) == 2 * 6 * 3 and len({r["clip_id"] for r in rows}) == len(rows)


def test_seeded_split_outside_official_lists_and_override(nusc, tmp_path):
    root = tmp_path / "nuscenes"
    shutil.copytree(nusc, root)
    (root / "v1.0-mini").rename(root / "v1.0-trainval")
    rows = build(root, tmp_path / "a.jsonl", "--frames", 4, "--stride", 4, version="v1.0-trainval")
    again = build(root, tmp_path / "b.jsonl", "--frames", 4, "--stride", 4, version="v1.0-trainval")
    by_scene = {r["scene_id"]: r["split"] for r in rows}
    assert rows == again and sorted(by_scene.values()) == ["train", "val"]
    assert all(r["split"] == by_scene[r["scene_id"]] for r in rows)
    assert by_scene == manifest.seeded_splits(["scene-0061", "scene-0103"], 0)
    rows = build(nusc, tmp_path / "c.jsonl", "--frames", 4, "--stride", 4, "--split", "test")
    assert {r["split"] for r in rows} == {"test"}


def test_partial_download_skips_clips_and_reports_counts(nusc, tmp_path, capsys):
    root = tmp_path / "partial"
    shutil.copytree(nusc, root)
    gone = fname("scene-0061", "CAM_FRONT", FRONT_0061[5], False)
    (root / gone).unlink()
    out = tmp_path / "m.jsonl"
    code, stdout, stderr = manifest_cli(capsys, "nuscenes", "--dataroot", root, "--frames", 4, "--stride", 3,
                               "--source", "sweeps", "--output", out)
    assert code == 0
    assert stderr == [
        f"warning: 1 of 24 frame files listed for these cameras are missing under {root} "
        f"(partial download?), e.g. {gone}; skipped 1 clip(s) that need them"]
    assert stdout == [
        f"wrote 5 clips to {out}: 2 scenes, 1 cameras, train 2, val 3",
        "splits: 2 scene(s) by the official v1.0-mini split",
        f"frame paths are relative to {root}: pass DATA_ROOT={root} (--data-root) to make check, "
        "train, eval and infer"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["timestamps"][0] for r in rows[:2]] == [FRONT_0061[0], FRONT_0061[6]]


def test_nuscenes_user_errors(nusc, tmp_path, capsys):
    def err(*flags):
        code, _, stderr = manifest_cli(capsys, "nuscenes", *flags, "--output", tmp_path / "m.jsonl")
        assert code == 2 and not (tmp_path / "m.jsonl").exists()
        return "\n".join(stderr)
    proc = run_script("manifest.py", "nuscenes", "--dataroot", nusc, "--cameras", "CAM_FRONT,FRONT",
                      "--output", tmp_path / "m.jsonl")  # once as a real process: exit status and stderr
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == err("--dataroot", nusc, "--cameras", "CAM_FRONT,FRONT")
    assert err("--dataroot", tmp_path / "nope") == \
        f"error: {tmp_path / 'nope'}: nuScenes dataroot not found " \
        "(NUSCENES= the folder holding v1.0-mini/ and samples/)"
    assert err("--dataroot", nusc, "--version", "v1.0-test") == \
        f"error: {nusc / 'v1.0-test'}: version folder not found (VERSION=v1.0-test; found: v1.0-mini)"
    assert err("--dataroot", nusc, "--cameras", "CAM_FRONT,FRONT") == \
        "error: --cameras CAM_FRONT,FRONT: unknown camera FRONT; valid: " + ", ".join(sorted(CAMERAS)) \
        + ", or all"
    assert err("--dataroot", nusc, "--frames", 1) == \
        "error: --frames 1: a clip needs at least one tubelet (2 frames, data.tubelet_size); use FRAMES=16"
    broken = tmp_path / "broken"
    shutil.copytree(nusc / "v1.0-mini", broken / "v1.0-mini")
    (broken / "v1.0-mini" / "sensor.json").unlink()
    assert err("--dataroot", broken) == \
        f"error: {broken / 'v1.0-mini' / 'sensor.json'}: table missing; " \
        f"extract the v1.0-mini metadata archive into {broken}"
    (broken / "v1.0-mini" / "sensor.json").write_text('{"token": "a dict, not a list"}')  # wrong JSON shape
    assert "sensor.json: not a nuScenes table (a JSON list of records with a token)" in \
        err("--dataroot", broken)
    shutil.copy(nusc / "v1.0-mini" / "sensor.json", broken / "v1.0-mini" / "sensor.json")
    # records without the schema's fields
    (broken / "v1.0-mini" / "scene.json").write_text('[{"token": "s1"}]')
    assert err("--dataroot", broken).startswith("error: ")  # one line (exit 2 checked in err), no traceback


# ---- folders of frames ----

@pytest.fixture
def drives(tmp_path):
    root = tmp_path / "drives"
    for i in random.Random(0).sample(range(1, 13), 12):  # written out of order on purpose
        jpeg(root / "drive_a" / f"frame_{i}.jpg")
    (root / "drive_a" / "notes.txt").write_text("not a frame")
    jpeg(root / "drive_a" / ".thumb.jpg")
    for i in range(5):
        jpeg(root / "drive_b" / "CAM_FRONT" / f"img{i * 5}.png")
    for i in range(2):
        jpeg(root / "drive_b" / "CAM_LEFT" / f"img{i}.jpg")
    jpeg(root / "drive_c" / "0.jpg")
    return root


def test_frame_folders_natural_sort_and_short_scenes(drives, tmp_path, capsys):
    out = tmp_path / "manifests" / "drives.jsonl"
    code, stdout, stderr = manifest_cli(capsys, "frames", "--frames-dir", drives, "--frames", 4, "--stride",
                                        4, "--output", out)
    assert code == 0
    assert stderr == [
        f"warning: {drives / 'drive_b' / 'CAM_LEFT'}: 2 frame(s), fewer than --frames 4; no clip",
        f"warning: {drives / 'drive_c'}: 1 frame(s), fewer than --frames 4; no clip"]
    assert stdout == [f"wrote 4 clips to {out}: 2 scenes, 2 cameras, train 1, val 3",
                      "splits: seed 0 drew 1 of 2 scenes as val (20% rounded, at least 1 of 2 or more); "
                      "clips go with their scene"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    split = {"drive_a": "val", "drive_b": "train"}
    expect = [{"clip_id": f"drive_a__unknown__{s:06d}", "split": "val", "scene_id": "drive_a",
               "camera": "unknown",
               "frame_paths": [f"../drives/drive_a/frame_{i}.jpg" for i in range(s + 1, s + 5)]}
              for s in (0, 4, 8)]
    expect.append({"clip_id": "drive_b__CAM_FRONT__000000", "split": split["drive_b"], "scene_id": "drive_b",
                   "camera": "CAM_FRONT",
                   "frame_paths": [f"../drives/drive_b/CAM_FRONT/img{i}.png" for i in (0, 5, 10, 15)]})
    assert rows == expect
    assert manifest.seeded_splits(["drive_a", "drive_b"], 0) == split
    # relative paths resolve with no DATA_ROOT
    code, stdout, stderr = manifest_cli(capsys, "check", "--manifest", out)
    assert (code, stdout[-1], stderr) == (0, "OK: no errors, 0 warning(s)", [])
    # one scene's images
    code, _, stderr = manifest_cli(capsys, "frames", "--frames-dir", drives / "drive_a", "--output", out)
    assert (code, stderr) == (2, [f"error: {drives / 'drive_a'}: no scene sub-folders; expected "
                                  f"FRAMES_DIR/SCENE/*.jpg or FRAMES_DIR/SCENE/CAMERA/*.jpg"])


def test_frame_paths_keep_symlinks_as_given(tmp_path, capsys):
    """A frames folder reached through a symlink: paths go through the link as given, never through its
    resolved target (which made them climb to / and down again), and they still resolve from the manifest."""
    real = tmp_path / "mnt" / "disk1" / "datasets" / "drives"
    for scene in ("a", "b"):
        for i in range(4):
            jpeg(real / scene / f"f{i}.jpg")
    (tmp_path / "work" / "shared").mkdir(parents=True)
    (tmp_path / "work" / "shared" / "drives").symlink_to(real)
    project = tmp_path / "work" / "project"
    project.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)  # as `make manifest FRAMES_DIR=../shared/drives` runs it
        code, stdout, _ = manifest_cli(capsys, "frames", "--frames-dir", "../shared/drives", "--frames", 2,
                                       "--stride", 2, "--output", "data/m.jsonl")
    assert code == 0
    rows = [json.loads(line) for line in (project / "data" / "m.jsonl").read_text().splitlines()]
    assert rows[0]["frame_paths"] == ["../../shared/drives/a/f0.jpg", "../../shared/drives/a/f1.jpg"]
    assert not any("mnt" in f for r in rows for f in r["frame_paths"])
    code, stdout, stderr = manifest_cli(capsys, "check", "--manifest", project / "data" / "m.jsonl")
    assert (code, stdout[-1], stderr) == (0, "OK: no errors, 0 warning(s)", [])


def test_frame_paths_are_absolute_where_no_relative_path_works(tmp_path, capsys):
    """The manifest's folder is itself a symlink elsewhere, so `..` from it leaves the link's target: a
    relative path would point at nothing, so the frame's absolute path (symlinks kept) is written instead."""
    frames = tmp_path / "frames"
    for i in range(2):
        jpeg(frames / "s" / f"{i}.jpg")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "out").symlink_to(tmp_path / "deep" / "er")
    out = tmp_path / "out" / "m.jsonl"
    code, _, _ = manifest_cli(capsys, "frames", "--frames-dir", frames, "--frames", 2, "--output", out)
    assert code == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["frame_paths"] == [str(frames / "s" / f"{i}.jpg") for i in range(2)]
    assert manifest_cli(capsys, "check", "--manifest", out)[0] == 0


def test_split_rule_is_said_for_few_scenes(tmp_path, capsys):
    """Seeded splits go by whole scenes: 20% of the scenes rounded, at least one of two or more. The summary
    says so, since clip counts can then be far from 80/20."""
    frames = tmp_path / "drives"
    for s, n in enumerate((2, 2, 8)):  # 3 scenes: round(0.6) = 1 scene to val
        for i in range(n):
            jpeg(frames / f"s{s}" / f"{i}.jpg")
    out = tmp_path / "m.jsonl"
    code, stdout, _ = manifest_cli(capsys, "frames", "--frames-dir", frames, "--frames", 2, "--stride", 2,
                                   "--output", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    val_scenes = {r["scene_id"] for r in rows if r["split"] == "val"}
    assert code == 0 and len(val_scenes) == 1
    assert stdout[1] == ("splits: seed 0 drew 1 of 3 scenes as val (20% rounded, at least 1 of 2 or more); "
                         "clips go with their scene")
    code, stdout, _ = manifest_cli(capsys, "frames", "--frames-dir", frames, "--frames", 2, "--stride", 2,
                                   "--split", "test", "--output", out)
    assert stdout == [f"wrote 6 clips to {out}: 3 scenes, 1 cameras, test 6",
                      "splits: every clip test (--split test)"]
    # --val-output: the val clips' lines as written, or every line (with a warning) when none is val
    val = tmp_path / "val.jsonl"
    code, stdout, _ = manifest_cli(capsys, "frames", "--frames-dir", frames, "--frames", 2, "--stride", 2,
                                   "--output", out, "--val-output", val)
    lines = out.read_text().splitlines(keepends=True)
    assert code == 0 and val.read_text() == "".join(x for x in lines if json.loads(x)["split"] == "val")
    assert stdout[-1] == f"{val}: {len(val.read_text().splitlines())} val clips"
    code, stdout, _ = manifest_cli(capsys, "frames", "--frames-dir", frames, "--frames", 2, "--stride", 2,
                                   "--split", "train", "--output", out, "--val-output", val)
    assert code == 0 and val.read_bytes() == out.read_bytes()
    assert stdout[-1] == f"warning: no val clips (too few scenes?): {val} holds every clip instead"


def test_natural_key():
    names = ["frame_10.jpg", "frame_2.jpg", "Frame_1.jpg", "frame_02.jpg", "b1", "a10"]
    assert sorted(names, key=manifest.natural_key) == \
        ["a10", "b1", "Frame_1.jpg", "frame_02.jpg", "frame_2.jpg", "frame_10.jpg"]


# ---- check ----

def test_check_reports_every_problem_as_file_line(tmp_path):
    for i in range(4):
        jpeg(tmp_path / f"f{i}.jpg", size=(16, 9) if i < 3 else (32, 18))
    data = (tmp_path / "f0.jpg").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(data[:len(data) // 2])
    m = tmp_path / "clips.jsonl"
    m.write_text("\n".join([
        json.dumps({"clip_id": "a", "scene_id": "s1", "camera": "CAM_FRONT",
                    "frame_paths": ["f0.jpg", "f1.jpg"]}),
        "{not json",
        json.dumps({"clip_id": "b"}),
        json.dumps({"clip_id": "c", "frame_paths": ["f0.jpg"]}),
        json.dumps({"clip_id": "a", "frame_paths": ["f2.jpg", "f3.jpg"]}),
        json.dumps({"clip_id": "d", "scene_id": "s2", "frame_paths": ["missing.jpg", "f2.jpg"]}),
        json.dumps({"clip_id": "e", "scene_id": "s2", "frame_paths": ["broken.jpg", "f3.jpg"]}),
        json.dumps({"clip_id": "f", "scene_id": "s2", "split": "val", "frame_paths": ["f1.jpg", "f2.jpg"]}),
    ]) + "\n")
    proc = run_script("manifest.py", "check", "--manifest", m)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[:6] == [
        f"warning: {m}:8: 2 frame(s) also in clip 'a' (line 1)",
        f"error: {m}:2: not JSON (Expecting property name enclosed in double quotes at column 2)",
        f"error: {m}:3: no frames (need a non-empty list of paths in 'frame_paths' or 'frames')",
        f"error: {m}:4: 1 frame(s), fewer than one tubelet (2)",
        f"error: {m}:5: duplicate clip_id 'a' (first on line 1)",
        f"error: {m}:6: frame {tmp_path / 'missing.jpg'}: file not found"]
    assert lines[6].startswith(f"error: {m}:7: frame {tmp_path / 'broken.jpg'}: not a readable image (")
    assert lines[7:] == ["error: 6 error(s), 1 warning(s): fix the errors before encoding"]
    assert proc.stdout.splitlines() == [
        f"manifest: {m}", "clips: 4 (no split (drawn at training) 3, val 1)", "scenes: 2",
        "cameras: 2 (CAM_FRONT 1 clips, unknown 3 clips)", "frames: 8 in clips, 6 distinct files",
        "image sizes: 16x9 3 files, 32x18 1 files"]


def test_check_a_made_nuscenes_manifest_needs_its_data_root(nusc, tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    build(nusc, out, "--cameras", "all", "--frames", 6, "--stride", 6, "--source", "sweeps")
    code, stdout, stderr = manifest_cli(capsys, "check", "--manifest", out, "--data-root", nusc)
    assert code == 0 and stderr == []
    assert stdout == [
        f"manifest: {out}", "clips: 24 (train 12, val 12)", "scenes: 2",
        "cameras: 6 (" + ", ".join(f"{c} 4 clips" for c in sorted(CAMERAS)) + ")",
        "frames: 144 in clips, 144 distinct files", "image sizes: 16x9 144 files",
        "OK: no errors, 0 warning(s)"]
    # without DATA_ROOT the paths resolve wrongly
    code, _, stderr = manifest_cli(capsys, "check", "--manifest", out)
    assert code == 1 and len(stderr) == 20 + 3  # capped: 20 listed, "... and 124 more", by kind, the count
    assert stderr[-2].startswith("error: 144 frame(s) not found under ") and \
        stderr[-2].endswith(f"pass DATA_ROOT={nusc}")
    assert stderr[0] == \
        f"error: {out}:1: frame {tmp_path / fname('scene-0061', 'CAM_BACK', 1532402927564981, False)}: " \
        "file not found"
    code, _, stderr = manifest_cli(capsys, "check", "--manifest", tmp_path / "none.jsonl")
    assert (code, stderr[0]) == (1, f"error: {tmp_path / 'none.jsonl'}: manifest not found "
                                    f"(pass MANIFEST=path/to/clips.jsonl)")


def test_a_nuscenes_manifest_trains_unchanged(nusc, tmp_path, tiny_encoder):
    import train
    out = tmp_path / "nusc.jsonl"
    rows = build(nusc, out, "--source", "sweeps", "--frames", 4, "--stride", 4, "--cameras",
                 "CAM_FRONT,CAM_BACK")
    assert {r["split"] for r in rows} == {"train", "val"}  # official mini split: one scene each
    train.main(["--manifest", str(out), "--data-root", str(nusc), "--encoder", str(tiny_encoder),
                "--run-dir", str(tmp_path / "run"), "--epochs", "2"])
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]


def test_split_leaving_train_short_warns_and_says_how_to_split_by_clip(tmp_path, demo_data, capsys):
    """Issue 23 point 4: train 2 / val 13 (a split by whole scene with few long drives) is warned about,
    when the manifest is written and when training reads it."""
    import cli
    import train
    from manifest import split_warning, write_manifest
    raw = [{**json.loads(x), "frame_paths": r["frames"]}  # absolute: the manifest is written elsewhere
           for x, r in zip(Path(demo_data).read_text().splitlines(), manifest.read_manifest(demo_data))]
    rows = [{**r, "split": "train" if i < 2 else "val"} for i, r in enumerate(raw)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train.load_splits(path, cli.load_config())
    out = capsys.readouterr().out
    assert "warning: the split leaves train 2 clips and val 13: training sees 13% of the clips" in out
    assert "set each line's \"split\" yourself" in out  # 5 scenes: a seeded split would stay by scene
    two = [{**r, "scene_id": "long" if i >= 2 else "short"} for i, r in enumerate(raw)]
    write_manifest(tmp_path / "w.jsonl", two, lambda s: "val" if s == "long" else "train")
    out = capsys.readouterr().out
    assert "train 2, val 13" in out and 'ARGS="--set data.use_manifest_split=false"' in out
    assert split_warning(12, 3, 2) is None and split_warning(3, 3, 2) is None
    assert split_warning(2, 9, 2) is not None and split_warning(2, 3, 2) is None  # 18%; under 10 clips


def test_frames_dir_over_several_datasets_warns_and_several_roots_make_one_manifest(tmp_path):
    """Issue 23 point 3: FRAMES_DIR at the parent of two datasets (one scene/*.jpg, one scene/camera/*.jpg)
    says what it assumed; both passed as roots give one manifest with the right scenes and cameras."""
    def frames(folder, n=4):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8)).save(folder / f"{i:03d}.jpg")
    frames(tmp_path / "all" / "drives" / "d1")
    frames(tmp_path / "all" / "drives" / "d2")
    frames(tmp_path / "all" / "nusc" / "scene-1" / "CAM_FRONT")
    proc = run_script("manifest.py", "frames", "--frames-dir", tmp_path / "all", "--frames", 2, "--stride", 2,
                      "--output", tmp_path / "bad.jsonl")
    assert f"warning: {tmp_path / 'all'}: its 2 sub-folders are laid out differently" in proc.stdout
    assert "3 levels down and is not read" in proc.stdout
    assert "pass each one as its own root" in proc.stdout
    proc = run_script("manifest.py", "frames", "--frames-dir", tmp_path / "all" / "drives",
                      tmp_path / "all" / "nusc", "--frames", 2, "--stride", 2, "--output",
                      tmp_path / "m.jsonl")
    assert proc.returncode == 0 and "warning" not in proc.stdout, proc.stdout + proc.stderr
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert sorted({(r["scene_id"], r["camera"]) for r in rows}) == [
        ("d1", "unknown"), ("d2", "unknown"), ("scene-1", "CAM_FRONT")] and len(rows) == 6
    frames(tmp_path / "other" / "d1")
    proc = run_script("manifest.py", "frames", "--frames-dir", tmp_path / "all" / "drives",
                      tmp_path / "other", "--output", tmp_path / "x.jsonl", "--frames", 2)
    assert proc.returncode == 2 and "scene 'd1' is also in" in proc.stderr
