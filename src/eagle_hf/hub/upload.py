"""Uploading a release folder to the Hub."""

from __future__ import annotations

import os

from .release import release_files


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, api=None) -> str:
    """Create the repository (and branch) if needed and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    files = release_files(folder)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id=repo_id, repo_type="model", branch=revision, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id, repo_type="model", folder_path=str(folder), revision=revision,
        commit_message=commit_message or "Upload EAGLE model (eagle-hf)", allow_patterns=files,
    )
    return str(getattr(info, "commit_url", info))
