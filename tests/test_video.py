"""Video input (issue 21): small H.264 / HEVC MP4s written with PyAV, a frame number drawn into each frame."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_script, write_jsonl

av = pytest.importorskip("av")

import cli  # noqa: E402
import jepa  # noqa: E402
import manifest  # noqa: E402
import video  # noqa: E402

W, H, BITS = 128, 64, 8
CFG = {"seed": 0, "data": {"image_size": 32, "tubelet_size": 2, "mask_ratio": 0.75, "patch_size": 16}}


def draw(i):
    """A frame whose top band holds i in binary (16-px black/white blocks), the rest a colour ramp."""
    a = np.zeros((H, W, 3), np.uint8)
    a[32:, :, 0] = (i * 7) % 256
    a[32:, :, 2] = np.linspace(0, 255, W, dtype=np.uint8)
    for b in range(BITS):
        if i >> b & 1:
            a[:32, 16 * b:16 * b + 16] = 255
    return a


def number(rgb):
    top = np.asarray(rgb)[:32].mean(axis=(0, 2))
    return sum(1 << b for b in range(BITS) if top[16 * b + 4:16 * b + 12].mean() > 128)


def write_video(path, n, codec="libx264", fps=10, vfr=False):
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    s.options = ({"g": "12", "crf": "10"} if codec == "libx264"
                 else {"x265-params": "keyint=12:log-level=none"})
    from fractions import Fraction
    s.codec_context.time_base = Fraction(1, 1000)
    t = 0
    for i in range(n):
        f = av.VideoFrame.from_ndarray(draw(i), format="rgb24")
        f.pts, f.time_base = t, Fraction(1, 1000)
        t += (50 if i % 2 else 150) if vfr else 1000 // fps
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


CODECS = ["libx264"] + (["libx265"] if "libx265" in av.codecs_available else [])


@pytest.mark.parametrize("codec", CODECS)
def test_frames_are_exact_in_any_order_and_manifest_builds(tmp_path, codec):
    """Each decoded frame is the frame written (by its drawn number), whether read forward, backward or with
    jumps; `manifest.py videos` cuts clips and skips files that are not videos."""
    vids = tmp_path / "videos"
    vids.mkdir()
    path = write_video(vids / "drive.mp4", 60, codec)
    (vids / "notes.txt").write_text("not a video")
    (vids / "empty.mp4").write_bytes(b"")
    (vids / "fake.mp4").write_bytes(b"\x00garbage" * 100)
    for i in [0, 1, 2, 40, 41, 5, 59, 13, 12, 30]:
        assert number(video.read_frame(str(path), i)) == i
    out = tmp_path / "m.jsonl"
    proc = run_script("manifest.py", "videos", "--videos-dir", vids, "--frames", 4, "--stride", 8,
                      "--fps", 5, "--output", out, check=True)
    assert "3 skipped" in proc.stdout and "notes.txt: not a video" in proc.stderr
    assert "empty.mp4: zero-byte" in proc.stderr and "fake.mp4" in proc.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["video"] == "videos/drive.mp4" and rows[0]["frame_indices"] == [0, 2, 4, 6]  # 10->5 fps
    assert rows[0]["timestamps"] == [0, 200000, 400000, 600000]
    recs = manifest.read_manifest(out)
    assert recs[1]["frames"][0] == video.ref(str(path), 16) and recs[1]["timestamps"][0] == 1600000
    assert run_script("manifest.py", "check", "--manifest", out).returncode == 0


def test_start_s_lines_variable_frame_rate_and_derived_ids(tmp_path):
    path = write_video(tmp_path / "vfr.mp4", 20, vfr=True)  # frames 0, 150, 200, 350, 400 ... ms
    m = write_jsonl(tmp_path / "m.jsonl", [
        {"scene_id": "s", "video": "vfr.mp4", "start_s": 0.3, "num_frames": 4, "every": 2},
        {"scene_id": "s", "video": "vfr.mp4", "frame_indices": [0, 1]}])
    a, b = manifest.read_manifest(m)
    assert [video.parse_ref(f)[1] for f in a["frames"]] == [3, 5, 7, 9]  # first pts >= 0.3 s is 0.35 s
    assert a["timestamps"] == [350000, 550000, 750000, 950000]
    assert [number(video.read_frame(str(path), i)) for i in (3, 5, 7, 9)] == [3, 5, 7, 9]
    assert a["clip_id"].startswith("s__unknown__") and a["clip_id"] != b["clip_id"]


def test_video_clip_equals_the_png_extracted_clip(tmp_path, tiny_encoder):
    """The same frames extracted losslessly to PNG give identical tubelets and embeddings."""
    path = write_video(tmp_path / "d.mp4", 24)
    idx = list(range(3, 19))
    for i in idx:
        video.read_frame(str(path), i).save(tmp_path / f"f{i:03d}.png")
    pngs = [f"f{i:03d}.png" for i in idx]
    m_png = write_jsonl(tmp_path / "png.jsonl", [{"clip_id": "c", "frame_paths": pngs}])
    m_vid = write_jsonl(tmp_path / "vid.jsonl", [{"clip_id": "c", "video": "d.mp4", "frame_indices": idx}])
    enc = jepa.VJEPAEncoder(str(tiny_encoder))
    cfg = dict(CFG, data=dict(CFG["data"], image_size=64))
    embs = []
    for m in (m_png, m_vid):
        ds = jepa.JEPADataset(manifest.read_manifest(m), cfg, enc.processor)
        item = ds[0]
        assert item.error is None
        embs.append(enc(item.clean))
    cos = jepa.compute_cosine_similarity(embs[0].flatten(1), embs[1].flatten(1))
    assert float(cos.min()) >= 0.9999


def test_long_file_decodes_in_bounded_slices_without_restarting(tmp_path, monkeypatch):
    """A long file: frames held per item never exceed one slice; consecutive clips never seek back to the
    start (the open container continues), and no frame is decoded more than about once."""
    path = write_video(tmp_path / "long.mp4", 400)
    rows = [{"clip_id": f"c{s}", "video": "long.mp4", "frame_indices": list(range(s, s + 40))}
            for s in range(0, 400, 40)]
    recs = manifest.read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    ds = jepa.JEPADataset(recs, CFG, None, slice_tubelets=4)
    seeks, decoded, in_flight, peak = [0], [0], [0], [0]
    real_seek, real_read = video._Open.seek, video.read_frame

    def seek(self, index):
        seeks[0] += 1
        real_seek(self, index)
        inner = self.frames

        def counting():
            for f in inner:
                decoded[0] += 1
                yield f
        self.frames = counting()

    def read(p, i):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        return real_read(p, i)
    monkeypatch.setattr(video._Open, "seek", seek)
    monkeypatch.setattr(video, "read_frame", read)
    video._OPEN.clear()
    for j in range(len(ds)):
        in_flight[0] = 0
        item = ds[j]
        assert item.error is None and item.clean.shape[0] <= 4
    assert peak[0] <= 8  # one slice: 4 tubelets x 2 frames
    assert seeks[0] == 1 and decoded[0] <= 400


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "zero-byte", "not-a-video", "missing"])
def test_bad_videos_are_one_line_errors_and_error_records(tmp_path, kind, tiny_encoder):
    good = write_video(tmp_path / "good.mp4", 40)
    data = good.read_bytes()
    bad = tmp_path / "bad.mp4"
    if kind == "truncated":
        bad.write_bytes(data[:len(data) // 3])
    elif kind == "corrupt":
        bad.write_bytes(data[:48] + bytes(len(data) - 48))
    elif kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "not-a-video":
        Image.fromarray(draw(1)).save(bad, "PNG")
    m = write_jsonl(tmp_path / "m.jsonl", [
        {"clip_id": "ok", "video": "good.mp4", "frame_indices": [0, 1, 2, 3]},
        {"clip_id": "bad", "video": "bad.mp4", "frame_indices": [30, 31, 32, 33]}])
    proc = run_script("manifest.py", "check", "--manifest", m)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert errors[0].startswith(f"error: {m}:2: video {bad}: ")
    assert errors[0].endswith("drop its clips from the manifest")
    why = {"not-a-video": "not a video", "zero-byte": "zero-byte file", "missing": "file not found"}
    assert why.get(kind, "not a readable video") in errors[0]
    ds = jepa.JEPADataset(manifest.read_manifest(m), CFG, None)
    items = [ds[j] for j in range(len(ds))]
    assert items[0].error is None and items[-1].error and "bad.mp4" in items[-1].error


def test_missing_av_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    m = write_jsonl(tmp_path / "m.jsonl", [{"clip_id": "c", "video": "x.mp4", "frame_indices": [0, 1]}])
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(cli.UserError) as e:
        manifest.read_manifest(m)
    assert str(e.value) == video.INSTALL_HINT and "pip install av==" in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_rotation_metadata_is_applied():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = 255
    assert video.rotated(rgb, 90).shape == (3, 2, 3) and video.rotated(rgb, 90)[2, 0, 0] == 255
    assert video.rotated(rgb, 0) is rgb


def test_report_shows_stills_of_a_video_clip(tmp_path):
    import report
    path = write_video(tmp_path / "d.mp4", 20)
    im = report.load_small(video.ref(str(path), 7))
    assert im is not None and number(im.resize((W, H))) == 7
    assert report.load_small(video.ref(str(tmp_path / "nope.mp4"), 7)) is None


def test_score_report_and_select_on_video_clips(tmp_path, reference, tiny_encoder):
    """infer.py scores video clips (a corrupt file gives an error record and the run goes on); the review
    page embeds stills decoded from the file; select names the file and frame range with real times."""
    write_video(tmp_path / "a.mp4", 48)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 4000)
    rows = [{"clip_id": f"a{s}", "scene_id": "a", "camera": "front", "video": "a.mp4",
             "frame_indices": list(range(s, s + 8))} for s in range(0, 40, 8)]
    rows.append({"clip_id": "bad", "scene_id": "b", "video": "bad.mp4", "frame_indices": list(range(8))})
    m = write_jsonl(tmp_path / "m.jsonl", rows)
    scores = tmp_path / "scores.jsonl"
    proc = run_script("infer.py", "--checkpoint", reference / "best.pt", "--manifest", m, "--encoder",
                      tiny_encoder, "--output", scores)
    assert proc.returncode == 1 and "scored 5 clips, 1 failed" in proc.stderr  # the run went on
    out = {r["clip_id"]: r for r in map(json.loads, scores.read_text().splitlines())}
    assert out["bad"]["score"] is None and "bad.mp4" in out["bad"]["error"]
    assert all(isinstance(out[f"a{s}"]["score"], float) for s in range(0, 40, 8))
    assert out["a8"]["first_frame"] == video.ref(str(tmp_path / "a.mp4"), 8)
    run_script("report.py", "--scores", scores, "--manifest", m, "--output", tmp_path / "r.html", check=True)
    page = (tmp_path / "r.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 5
    sel = tmp_path / "sel.jsonl"
    run_script("selection.py", "select", "--scores", scores, "--manifest", m, "--top", "3", "--output", sel,
               check=True)
    picked = [json.loads(x) for x in sel.read_text().splitlines()]
    assert picked and all("a.mp4#frame=" in p["last_frame"] for p in picked)
    first = int(picked[0]["first_frame"].rsplit("=", 1)[1])
    assert picked[0]["first_timestamp"] == first * 100000
