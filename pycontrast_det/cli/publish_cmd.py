"""``pycontrast-zoo publish``: put zoo entries somewhere durable (a folder, or the Hugging Face Hub) with model
cards, ``model.safetensors``, configs, logs, checksums and a manifest that lists the new copies first.

No torch at import (the work is in :mod:`pycontrast_det.publish`, imported when the command runs).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import atomic
from ..errors import ZooError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``publish`` subcommand."""
    p = subparsers.add_parser(
        "publish", help="write entries' model cards, model.safetensors, configs, logs and a manifest to a folder "
                        "or upload them to the Hugging Face Hub",
        description="Publish detector entries (or pretrains) from the verified cache: per entry a folder with its "
                    "model card (README.md), effective config.yaml, model.safetensors (weights only, detectron2 "
                    "key names), training log and SHA256SUMS; per pretrain the released file; at the root zoo.yaml, "
                    "a merge: true manifest listing each file's path in the tree, its hf:// URL and (same bytes "
                    "only) the original URL. The tree is also what PYCONTRAST_ZOO_ENDPOINT serves as a mirror.")
    p.add_argument("entries", nargs="*", metavar="ENTRY", help="detector entries or pretrains")
    p.add_argument("--all", action="store_true", help="every detector entry")
    p.add_argument("--to", required=True, metavar="DIR|hf://ORG",
                   help="a folder, or the Hugging Face organisation (hf://ORG; hf://ORG/REPO with --layout folders)")
    p.add_argument("--what", default="model,log,pretrain", help="comma-separated roles (default: %(default)s)")
    p.add_argument("--layout", choices=("repos", "folders"), default="repos",
                   help="repos: one repository per entry and pretrain (--to hf://ORG: ORG/<name>, its config at the "
                        "top, so the Hub counts its downloads), grouped in a collection; folders: one repository "
                        "with a folder per entry (--to hf://ORG/REPO) (default: %(default)s)")
    p.add_argument("--repo", metavar="ORG|ORG/REPO", help="with --to DIR: the Hub organisation (ORG/REPO with "
                                                           "--layout folders) this tree is made for (its hf:// URLs go "
                                                           "into the manifest and the cards)")
    p.add_argument("--weights-from-cache", action="store_true",
                   help="never download: use only the cache, local files and the Hugging Face cache")
    p.add_argument("--dry-run", action="store_true",
                   help="build the tree in a temporary folder from the cache only, print every file with its size and "
                        "the manifest, then remove it: nothing written, nothing uploaded, no network")
    p.add_argument("--fragment", metavar="PATH",
                   help="also write the manifest without tree-relative paths here (default with --to hf://: "
                        "zoo-fragment.yaml); merge it with `pycontrast-zoo pin --write-manifest --merge PATH`")
    p.add_argument("--github", metavar="OWNER/REPO", default=None,
                   help="the GitHub repository torch.hub loads pycontrast-det from, for the cards")
    p.add_argument("--no-check", action="store_true",
                   help="skip loading each converted detector into its architecture before publishing it")
    p.add_argument("--message", default="pycontrast-zoo publish", help="commit message of an upload")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_publish)


def _cmd_publish(args: argparse.Namespace) -> int:
    from ..publish import Options, parse_target, publish
    from ..publish.card import DEFAULT_GITHUB
    from ..zoo import load_manifest
    from .zoo_cmds import parse_roles, target_names

    zoo = load_manifest(args.manifest)
    names = target_names(zoo, args.entries, args.all)
    target = parse_target(args.to, args.layout, args.repo)
    if args.fragment and target.repo is None:
        raise ZooError("--fragment: a tree without a repository has only paths inside it; give --repo ORG (or "
                       "ORG/REPO with --layout folders)")
    options = Options(roles=parse_roles(args.what), offline=True if args.weights_from_cache else None, quiet=args.quiet,
                      check=not args.no_check, github=args.github or DEFAULT_GITHUB)
    report = publish(zoo, names, target, options, dry_run=args.dry_run, message=args.message,
                     cache_only_flag="--weights-from-cache" if args.weights_from_cache else None)
    fragment = Path(args.fragment) if args.fragment else (Path("zoo-fragment.yaml") if target.uploads else None)
    head = "dry run (nothing written or uploaded): would publish" if args.dry_run else "published"
    print(f"{head} {len(names)} name(s) to {target.describe()}:")
    for item in report.files:
        where = target.hf_url(item.path) if target.directory is None else str(target.directory / item.path)
        if target.uploads and target.layout == "repos" and "/" not in item.path:
            where = f"{item.path} (kept locally: --fragment)"
        print(f"  {where}  {item.size_bytes} bytes  sha256 {item.sha256}")
    total = sum(item.size_bytes for item in report.files)
    print(f"{len(report.files)} file(s), {total} bytes ({total / 2**20:.1f} MiB)")
    for repo, commit in report.commits.items():
        print(f"hf://{repo}: commit {commit}")
    if report.collection is not None:
        print(f"collection: {report.collection}")
    for note in report.notes:
        print(f"note: {note}")
    if args.dry_run:
        print("--- zoo.yaml (the tree's manifest) ---")
        print(report.manifest, end="")
        return 0
    if fragment is not None and report.portable is not None:
        atomic.write_text(fragment, report.portable)
        print(f"manifest for use outside the tree: {fragment} "
              f"(merge it: pycontrast-zoo pin --write-manifest --merge {fragment})")
    if target.directory is not None:
        tree = target.directory.resolve()
        print(f"manifest of the tree: {tree / 'zoo.yaml'} (use it with PYCONTRAST_ZOO_MANIFEST; serve or share the "
              f"folder as a mirror: PYCONTRAST_ZOO_ENDPOINT={tree.as_uri()})")
    return 0
