"""Placeholder: the README walker (written next)."""
import shutil
from pathlib import Path


def install_in_hf_cache(snapshot, hf_home, repo_id):
    """Copy a model snapshot folder into a Hugging Face cache under hf_home as `repo_id` (refs/main -> one
    commit), so from_pretrained(repo_id) finds it offline, exactly as if it had been downloaded there."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(snapshot, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo
