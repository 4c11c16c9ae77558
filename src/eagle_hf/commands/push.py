"""``eagle-hf push OUT --repo-id ORG/NAME``: upload a saved model folder to the Hugging Face Hub.

The folder is checked first (weights, processor, tokenizer, chat template, generation config);
a model card is written if the folder has none, or refreshed if eagle-hf generated it.
``--remote-code`` uploads a copy that also carries the model code (``trust_remote_code=True``
loading without eagle-hf). ``--dry-run`` prints what would be uploaded and touches nothing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="OUT", help="folder written by save_pretrained / eagle-hf convert / train")
    parser.add_argument("--repo-id", required=True, help="target repository, e.g. my-org/eagle-x5-7b")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created if missing; default: main)")
    parser.add_argument("--commit-message", help="commit message (default: 'Upload EAGLE model (eagle-hf)')")
    parser.add_argument("--remote-code", action="store_true",
                        help="upload a copy that carries the model code and loads with trust_remote_code=True")
    parser.add_argument("--license", help="license for the generated model card (e.g. apache-2.0)")
    parser.add_argument("--base-model", action="append", default=None, metavar="ID",
                        help="base model Hub id for the card metadata (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded and stop")


def run(args) -> int:
    from eagle_hf import hub
    from eagle_hf.inference import check_model_folder

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", args.repo_id):
        raise ValueError(f"--repo-id must look like owner/name, got {args.repo_id!r}")
    folder = Path(args.folder)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    model_type = check_model_folder(folder)
    if model_type != "eagle_vl":
        raise ValueError(f"{folder} is an original EAGLE checkpoint; convert it with `eagle-hf convert` before pushing")

    staging = None
    try:
        if args.remote_code:
            staging = Path(tempfile.mkdtemp(prefix="eagle-hf-push-"))
            print(f"exporting {folder} with its model code to {staging}", file=sys.stderr)
            hub.export_folder_for_remote_code(folder, staging / "release", repo_id=args.repo_id,
                                              **_card_kwargs(args))
            source = staging / "release"
        else:
            source = folder
        card_note = _card_plan(source, args)
        problems = [p for p in hub.check_release(source) if not (card_note and p.startswith("README.md"))]
        if problems:
            raise ValueError(f"{folder} is not a complete release: {'; '.join(problems)}")
        if args.dry_run:
            _print_plan(source, args, card_note)
            return 0
        if card_note:
            hub.write_model_card(source, repo_id=args.repo_id, **_card_kwargs(args))
        url = hub.push_folder(source, args.repo_id, private=args.private, revision=args.revision,
                              commit_message=args.commit_message)
        print(f"uploaded {len(hub.release_files(source))} files to {args.repo_id}: {url}")
        return 0
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _card_kwargs(args) -> dict:
    kwargs = {}
    if args.license:
        kwargs["license"] = args.license
    if args.base_model:
        kwargs["base_models"] = args.base_model
    return kwargs


def _card_plan(folder: Path, args) -> str:
    """What happens to README.md: '' (kept as written), 'generated' or 'refreshed'."""
    from eagle_hf import hub

    readme = folder / "README.md"
    if not readme.is_file():
        return "generated"
    if hub.card_is_generated(folder):
        return "refreshed"
    return ""


def _print_plan(folder: Path, args, card_note: str) -> None:
    from eagle_hf import hub

    files = hub.release_files(folder)
    if card_note == "generated":
        files = sorted(set(files) | {"README.md"})
    target = f"{args.repo_id}" + (f"@{args.revision}" if args.revision else "")
    visibility = "private" if args.private else "public"
    print(f"dry run: would upload {len(files)} files to {target} ({visibility}"
          f"{', with model code' if args.remote_code else ''}):")
    for name in files:
        path = folder / name
        size = _size(path.stat().st_size) if path.exists() else "-"
        note = f" (model card {card_note})" if name == "README.md" and card_note else ""
        print(f"  {name}  {size}{note}")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
