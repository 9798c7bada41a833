"""Where a publish goes: a folder on disk, or Hugging Face repositories (one folder per entry in one repository,
or one repository per entry), and the names each published file gets there. No torch here."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import PublishError

LAYOUTS = ("folders", "repos")
HUB_WEB = "https://huggingface.co"
HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Target:
    """``directory``: the tree is written there (None: staged, then uploaded); ``repo``: the Hub side, ``org/repo``
    (layout ``folders``) or ``org`` (layout ``repos``: repository ``org/<name>`` per entry or pretrain), None
    for a folder that no repository mirrors."""

    directory: Optional[Path]
    repo: Optional[str]
    layout: str

    @property
    def uploads(self) -> bool:
        """Whether the tree is uploaded (``--to hf://...``) rather than written to a folder."""
        return self.directory is None

    def repo_id(self, name: str) -> str:
        """The repository holding the folder ``name`` of the tree."""
        assert self.repo is not None
        return self.repo if self.layout == "folders" else f"{self.repo}/{name}"

    def path_in_repo(self, tree_path: str) -> str:
        """A tree path (``<name>/<file>``, or a root file) inside its repository."""
        if self.layout == "folders" or "/" not in tree_path:
            return tree_path
        return tree_path.split("/", 1)[1]

    def hf_url(self, tree_path: str) -> Optional[str]:
        """``hf://`` URL of a tree path (None without a repository)."""
        if self.repo is None:
            return None
        return f"hf://{self.repo_id(tree_path.split('/', 1)[0])}/{self.path_in_repo(tree_path)}"

    def web_url(self, tree_path: str) -> Optional[str]:
        """The page of a tree path on huggingface.co, for people (None without a repository); HF_ENDPOINT is where
        files are fetched from, not what a published card links to."""
        if self.repo is None:
            return None
        return f"{HUB_WEB}/{self.repo_id(tree_path.split('/', 1)[0])}/blob/main/{self.path_in_repo(tree_path)}"

    def folder_spec(self, name: str) -> Optional[str]:
        """The name ``pcd.load`` takes for the published folder ``name`` (None without a repository)."""
        if self.repo is None:
            return None
        return f"hf://{self.repo}/{name}"

    def describe(self) -> str:
        """One phrase naming the target."""
        hub = f"hf://{self.repo}" + ("/<name>" if self.layout == "repos" else "") if self.repo else None
        if self.directory is None:
            return hub or "?"
        return f"{self.directory}" + (f" (a tree for {hub})" if hub else "")


def _hub_name(text: str, parts: int, layout: str, option: str) -> str:
    names = [p for p in text.strip("/").split("/")]
    if "@" in text:
        raise PublishError(f"{option} {text!r}: publish commits to the main branch; drop the @revision")
    if len(names) != parts or not all(HUB_NAME.match(n) for n in names):
        shape = ("hf://ORG/REPO (one repository, a folder per entry)" if parts == 2 else
                 "hf://ORG (one repository ORG/<name> per entry; --layout folders for hf://ORG/REPO)")
        raise PublishError(f"{option} {text!r}: with --layout {layout}, give {shape} (letters, digits, '-', '_', '.')")
    return "/".join(names)


def parse_target(to: str, layout: str = "folders", repo: Optional[str] = None) -> Target:
    """``--to DIR|hf://org/repo`` (``hf://org`` with ``--layout repos``) and ``--repo`` (the repository a DIR
    tree is made for) -> a Target; PublishError naming the option when malformed."""
    if layout not in LAYOUTS:
        raise PublishError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    parts = 2 if layout == "folders" else 1
    if to.startswith("hf://"):
        if repo is not None:
            raise PublishError("--repo names the repository of a --to DIR tree; with --to hf:// it is the target")
        return Target(None, _hub_name(to[len("hf://"):], parts, layout, "--to"), layout)
    if "://" in to:
        raise PublishError(f"--to {to!r}: give a folder or hf://ORG/REPO")
    hub = None if repo is None else _hub_name(repo[len("hf://"):] if repo.startswith("hf://") else repo, parts,
                                              layout, "--repo")
    return Target(Path(to).expanduser(), hub, layout)
