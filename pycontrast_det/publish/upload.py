"""Upload a built tree to the Hugging Face Hub with huggingface_hub: create each repository if needed, then one
commit per repository with exactly the files of this publish (token from HF_TOKEN or ``hf auth login``;
HF_ENDPOINT honoured). No torch here."""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import PublishError

if TYPE_CHECKING:
    from .target import Target
    from .tree import TreeFile


def repo_files(target: "Target", files: Sequence["TreeFile"]) -> dict[str, list[tuple[str, str]]]:
    """repository -> [(path in the repository, tree path)]; root files go only to a one-repository layout."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in files:
        if "/" not in item.path and target.layout == "repos":
            continue  # the root manifest and index describe many repositories: kept locally (--fragment)
        groups[target.repo_id(item.path.split("/", 1)[0])].append((target.path_in_repo(item.path), item.path))
    return dict(groups)


def upload(target: "Target", root: Path, files: Sequence["TreeFile"], message: str) -> dict[str, str]:
    """Create the repositories (``exist_ok``) and commit the files to each; returns repository -> commit id.
    PublishError naming the repository and what to check when the Hub refuses."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None)
    commits = {}
    for repo_id, items in repo_files(target, files).items():
        try:
            api.create_repo(repo_id, repo_type="model", exist_ok=True)
            operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(root / tree_path))
                          for path, tree_path in items]
            info = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type="model")
        except Exception as exc:  # huggingface_hub raises many kinds (HTTP, auth, validation): all end the upload
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise PublishError(f"hf://{repo_id}: upload failed ({type(exc).__name__}: {text}); check HF_TOKEN or "
                               f"`hf auth login`, and write access to the repository") from None
        commits[repo_id] = info.oid
    return commits
