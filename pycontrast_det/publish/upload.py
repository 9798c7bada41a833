"""Upload a built tree to the Hugging Face Hub with huggingface_hub: create each repository if needed, then one
commit per repository with exactly the files of this publish, and a collection grouping one repository per entry
(token from HF_TOKEN or ``hf auth login``; HF_ENDPOINT honoured)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ..modeling.hub import hub_api, hub_failure

if TYPE_CHECKING:
    from .target import Target
    from .tree import TreeFile

COLLECTION = "PyContrast detection-transfer zoo"
COLLECTION_NOTE = "Mask R-CNN detectors fine-tuned on COCO from self-supervised ResNet-50s (pycontrast-det)"


def repo_files(target: "Target", files: Sequence["TreeFile"]) -> dict[str, list[tuple[str, str]]]:
    """repository -> [(path in the repository, tree path)]; root files go only to a one-repository layout."""
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in files:
        if "/" not in item.path and target.layout == "repos":
            continue  # the root manifest and index describe many repositories: kept locally (--fragment)
        groups[target.repo_id(item.path.split("/", 1)[0])].append((target.path_in_repo(item.path), item.path))
    return dict(groups)


def upload(target: "Target", root: Path, files: Sequence["TreeFile"],
           message: str) -> tuple[dict[str, str], Optional[str]]:
    """Create the repositories (``exist_ok``) and commit the files to each; with one repository per entry, group
    them in a collection of the organisation. Returns (repository -> commit id, the collection's URL or None).
    PublishError naming the repository and what to check when the Hub refuses."""
    from huggingface_hub import CommitOperationAdd

    api = hub_api()
    commits = {}
    for repo_id, items in repo_files(target, files).items():
        try:
            api.create_repo(repo_id, repo_type="model", exist_ok=True)
            operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(root / tree_path))
                          for path, tree_path in items]
            info = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type="model")
        except Exception as exc:  # huggingface_hub raises many kinds (HTTP, auth, validation): all end the upload
            raise hub_failure(repo_id, exc) from None
        commits[repo_id] = info.oid
    if target.layout != "repos" or not commits:
        return commits, None
    assert target.repo is not None
    try:
        collection = api.create_collection(COLLECTION, namespace=target.repo, description=COLLECTION_NOTE,
                                           exists_ok=True)
        for repo_id in commits:
            api.add_collection_item(collection.slug, repo_id, "model", exists_ok=True)
    except Exception as exc:
        raise hub_failure(f"{target.repo} (collection {COLLECTION!r})", exc) from None
    return commits, collection.url
