"""``pycontrast-zoo push``: a training run or checkpoint of your own -> a Hugging Face repository (weights, config,
classes, log, metrics, a model card with the measured AP). No torch at import."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``push`` subcommand."""
    p = subparsers.add_parser(
        "push", help="upload your own trained model (a run folder or checkpoint) to a Hugging Face repository",
        description="Upload a training run (its OUTPUT_DIR: the last checkpoint, log.txt, metrics.json) or one "
                    "checkpoint to the Hugging Face repository ORG/NAME: model.safetensors (detectron2 key names, "
                    "the classes in its header), the effective config.yaml, classes.json, the training log and "
                    "metrics, SHA256SUMS and a model card (AP measured on the run's dataset, per class; base_model: "
                    "the zoo entry or pretrain it started from). pycontrast_det.load('hf://ORG/NAME') loads it. "
                    "The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT is honoured.")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a training run's output folder, or a checkpoint file")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub repository (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repository private (an existing one is kept "
                                                          "as it is)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--revision", metavar="BRANCH", default=None,
                   help="commit to this branch (created if needed; default: main)")
    p.add_argument("--base-model", metavar="ORG/NAME", default=None,
                   help="the card's base_model (default: the Hub repository of the zoo entry or pretrain the run "
                        "started from, when the manifest lists one)")
    p.add_argument("--message", default="pycontrast-zoo push", help="commit message (default: %(default)s)")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> int:
    from ..modeling.hub import dataset_label
    from ..publish.push import check_repo, push_run

    url, info = push_run(args.run, args.repo, private=args.private, create_pr=args.create_pr,
                         revision=args.revision, base_model=args.base_model, message=args.message)
    repo = check_repo(args.repo)
    what = "pull request" if args.create_pr else "commit"
    print(f"pushed {args.run} to hf://{repo} ({what} {url})")
    ap = info.evaluation.get("bbox", {}).get("AP")
    if ap is not None:
        base = info.base_model or "none (not on the Hub)"
        print(f"card: box AP {ap:.1f} on {dataset_label(info.dataset or '?')}; base_model {base}")
    print(f"load it: pycontrast_det.load(\"hf://{repo}\")")
    return 0
