"""The hub probe honours HF_ENDPOINT and proxies (tested offline against a local server), and --resume finds
the run's own manifest."""
import http.server
import os
import shutil
import threading

import pytest

import cli
from conftest import ROOT
import jepa
import train


class Answer404(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # any HTTP status counts as "the hub answered"
        self.server.paths.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Answer404)
    httpd.paths = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def test_hub_probe_uses_hf_endpoint_and_proxies(server, monkeypatch):
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    port = server.server_address[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert jepa.hub_reachable(timeout=2) and server.paths == ["/api/models"]
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # unresolvable: reachable only through the proxy
    assert not jepa.hub_reachable(timeout=2)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    assert jepa.hub_reachable(timeout=2) and server.paths[-1] == "http://hub.invalid/api/models"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens there: a fast "unreachable"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert not jepa.hub_reachable(timeout=2)


def test_resume_reads_the_runs_own_manifest_and_refuses_a_changed_one(tmp_path, tiny_encoder, demo_data,
                                                                      reference):
    data = tmp_path / "data"
    shutil.copytree(demo_data.parent, data)
    run = tmp_path / "run"
    args = ["--encoder", str(tiny_encoder), "--run-dir", str(run), "--epochs", "1", "--set",
            "training.encode_chunk_clips=4"]
    train.main(["--manifest", str(data / "manifest.jsonl"), *args])
    train.main([*args[:-4], "--epochs", "2", "--resume"])  # no --manifest: the recorded one
    assert (run / "metrics.jsonl").read_text().count("\n") == 2
    with open(data / "manifest.jsonl", "a") as f:
        f.write("\n")  # any change to the file
    with pytest.raises(cli.UserError,
                       match=r"manifest.jsonl: the manifest of .*run is gone or changed since"):
        train.main([*args[:-4], "--epochs", "3", "--resume"])
    with pytest.raises(cli.UserError, match="--manifest is required"):
        train.main(["--run-dir", str(tmp_path / "new")])


def test_checkpoint_finds_its_local_encoder_from_another_folder(tmp_path, reference, tiny_encoder, demo_data):
    """Issue 23 point 5: a head trained with a relative encoder folder still scores when infer.py runs
    elsewhere (the checkpoint's resolved absolute path is tried); a missing folder gets local-folder
    advice."""
    import subprocess
    import sys
    import torch
    ckpt = torch.load(reference / "best.pt", weights_only=True)
    assert ckpt["encoder_path"] == os.path.abspath(tiny_encoder)  # stored beside the name as given
    ckpt["encoder_name"] = ckpt["config"]["model"]["encoder_name"] = "data/demo/tiny-vjepa2"  # as typed
    torch.save(ckpt, tmp_path / "best.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--checkpoint", str(tmp_path / "best.pt"),
                           "--manifest", str(demo_data), "--output", "s.jsonl"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"using {os.path.abspath(tiny_encoder)}, where training found it" in proc.stderr
    assert len((elsewhere / "s.jsonl").read_text().splitlines()) == 15
    with pytest.raises(cli.UserError) as e:
        jepa.load_encoder_parts("data/demo/no-such-snapshot")
    assert "no such folder (a relative path is read from" in str(e.value)
    assert "ENCODER=/abs/path" in str(e.value) and "hf download" not in str(e.value)
