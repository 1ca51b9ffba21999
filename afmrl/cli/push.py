"""``afmrl push``: publish a checkpoint with its model card, and optionally the catalogue as a Hub
dataset and the demo as a Gradio Space (:mod:`afmrl.hub`).

Inputs and repository names are checked, and the token looked up, before anything is built or
uploaded; each repository gets one commit. The checkpoint folder is only read: its card is
rendered for the upload (with ``model-index`` from ``--metrics``, an ``afmrl evaluate``
``metrics.json``), not written into it.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="AFMRL checkpoint folder to upload")
    parser.add_argument("--repo-id", required=True, help="model repository, ORG/NAME")
    parser.add_argument(
        "--metrics", default=None, help="`afmrl evaluate` metrics.json for the card's model-index"
    )
    parser.add_argument("--data", default=None, help="catalogue to upload as a Hub dataset")
    parser.add_argument("--dataset-repo", default=None, help="dataset repository for --data")
    parser.add_argument(
        "--space-repo", default=None, help="Space repository for the demo (Gradio SDK)"
    )
    parser.add_argument("--private", action="store_true", help="create private repositories")


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from afmrl.data import load_catalog
    from afmrl.errors import MissingPathError, UserError
    from afmrl.hub import (
        check_repo_id,
        dataset_upload,
        model_upload,
        push,
        read_metrics,
        require_token,
        space_upload,
    )
    from afmrl.models import check_checkpoint_folder

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise MissingPathError(f"--checkpoint {checkpoint}: no such folder")
    check_checkpoint_folder(checkpoint, "--checkpoint")
    check_repo_id(args.repo_id, "--repo-id")
    if (args.data is None) != (args.dataset_repo is None):
        raise UserError("--data and --dataset-repo go together: the catalogue and where it goes")
    if args.data is not None:
        if not Path(args.data).exists():
            raise MissingPathError(f"--data {args.data}: no such file or folder")
        check_repo_id(args.dataset_repo, "--dataset-repo")
    if args.space_repo is not None:
        check_repo_id(args.space_repo, "--space-repo")
    metrics = read_metrics(args.metrics)
    require_token()

    with tempfile.TemporaryDirectory(prefix="afmrl-push-") as tmp:
        uploads = [
            model_upload(checkpoint, args.repo_id, metrics=metrics, dataset_id=args.dataset_repo)
        ]
        if args.data is not None:
            data = load_catalog(args.data)
            uploads.append(dataset_upload(data, args.data, args.dataset_repo, Path(tmp)))
        if args.space_repo is not None:
            uploads.append(
                space_upload(args.space_repo, model_id=args.repo_id, dataset_id=args.dataset_repo)
            )
        for upload, url in zip(uploads, push(uploads, private=args.private), strict=True):
            print(f"[push] {upload.repo_type} {upload.repo_id}: {len(upload.files)} files -> {url}")
    return 0
