"""``uniq-hub publish PATH --repo-id ORG/NAME``: verify an exported model folder, then upload it.

1. **Plan** (:func:`uniq_hub.hub.publish_plan.plan_upload`): only a declared set of files goes up,
   plus the shipped code (the library's own, added whether or not the folder has code files); a
   missing card is generated.
2. **Verify** (:func:`uniq_hub.hub.publish_verify.verify_folder`) a staged copy of exactly those
   files: with uniq_hub, and in a second process without it, through the copy's own code
   (:mod:`uniq_hub.hub.remote_code_check`); an ONNX graph by ``onnx_export.verify_onnx``.
3. **Upload** the staged copy in one commit (:func:`uniq_hub.hub.hub_client.upload`), each Hub
   request with a timeout and one-line errors.

``--dry-run`` plans and verifies, and contacts nothing. :func:`prepare` (plan, stage, verify) and
:func:`upload` are the two halves, so that ``publish-zoo`` verifies every entry before it uploads any.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .hub_client import DEFAULT_TIMEOUT, check_timeout, upload
from .publish_plan import RESULTS_FILES, PublishError, UploadPlan, plan_upload
from .publish_verify import verify_folder, verify_onnx

__all__ = ["add_arguments", "prepare", "publish", "run"]

logger = logging.getLogger(__name__)


@contextmanager
def prepare(
    folder: str | os.PathLike,
    repo_id: str,
    zoo_name: str | None = None,
    results_file: str | os.PathLike | None = None,
) -> Iterator[tuple[UploadPlan, Path]]:
    """Plan, stage and verify ``folder`` for ``repo_id``; yields ``(plan, staged copy)``, the copy
    living until the context ends (what :func:`upload` sends). Raises :class:`PublishError`."""
    plan = plan_upload(folder, repo_id, zoo_name=zoo_name, results_file=results_file)
    for warning in plan.warnings:
        logger.warning(warning)
    with tempfile.TemporaryDirectory(prefix="uniq-publish-") as tmp:
        staged = plan.stage(Path(tmp))
        try:
            verify_folder(staged)
            verify_onnx(staged)
        except PublishError as err:  # name the user's folder, not the staged copy
            raise PublishError(str(err).replace(str(staged), str(plan.folder))) from None
        yield plan, staged


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    zoo_name: str | None = None,
    results_file: str | os.PathLike | None = None,
    dry_run: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
):
    """Verify ``folder`` and upload it to ``repo_id`` in one commit; returns the ``CommitInfo``
    (the verified plan on a dry run). ``timeout``: seconds for each Hub request."""
    check_timeout(timeout)
    with prepare(folder, repo_id, zoo_name=zoo_name, results_file=results_file) as (plan, staged):
        if dry_run:
            return plan
        return upload(plan, staged, private=private, revision=revision, token=token,
                      commit_message=commit_message, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="exported model folder (save_pretrained output)")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create (or switch) the repo to private")
    parser.add_argument("--revision", help="branch to push to (created from main when new)")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--zoo", help="zoo entry whose card to generate when README.md is missing "
                                      "(default: the repo id when it is a zoo name)")
    parser.add_argument("--results", help=f"results JSON for the card (default: {' or '.join(RESULTS_FILES)} "
                                          "in the folder, else the zoo's committed results)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each Hub request may take (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--dry-run", action="store_true",
                        help="verify and print what would be uploaded; contact nothing")


def run(args: argparse.Namespace) -> int:
    try:
        out = publish(
            args.path, args.repo_id, private=args.private, revision=args.revision, token=args.token,
            commit_message=args.commit_message, zoo_name=args.zoo, results_file=args.results, dry_run=args.dry_run,
            timeout=args.timeout,
        )
    except PublishError as err:
        raise SystemExit(f"uniq-hub publish: {err}") from None
    where = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "") + (" (private)" if args.private else "")
    if args.dry_run:
        print(f"dry run: verified; would upload to {where}:\n{out.describe()}")
    else:
        print(f"published {args.path} to {where}: {out.commit_url}")
    return 0
