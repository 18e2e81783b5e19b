"""Push a Hub-ready export (`save_for_hub`'s folder) to the Hugging Face Hub, and the `vaswani-push` command.

`push_folder` refuses a folder that others could not load from the Hub (no `auto_map` in config.json, a code
file it names missing, no weights, a truncated safetensors file, no tokenizer), then creates the repository if
needed, the branch if one is asked, and uploads the folder in one commit. huggingface_hub skips files whose
content the branch already holds, so pushing an unchanged folder uploads nothing and makes no commit.

Only what an export writes is published (`plan_publication`, the one allow-list): the weights (safetensors and
their index), config.json, generation_config.json, the tokenizer, the code files `auto_map` names, the model card,
all_results.json, training_args.json and the images the card shows. Anything else (hidden files such as `.env`,
subfolders such as `checkpoints/`, other files) is skipped and named. Pickles (`*.bin`, `*.pt`, ...) are refused,
since loading one runs whatever code it holds, and so is a file to publish that is a link leading out of the folder.

The model card's "How to load" snippet is rewritten to name the repository pushed to (in the folder too, so that
the folder stays what the Hub serves).

    vaswani-push outputs/vaswani-en-es/model user/vaswani-en-es [--revision dev] [--private] [--message M] [--dry-run]

The Hub and the token come from huggingface_hub's usual settings (`hf auth login` or `HF_TOKEN`, `HF_ENDPOINT`).
"""

import argparse
import glob
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id

from vaswani.configuration.errors import InputError
from vaswani.configuration.files import PICKLE_SUFFIXES, safetensors_problem

# The base class of the errors of huggingface_hub's HTTP library (httpx; httpx2 since 2.0), which it raises as they
# are for a Hub it cannot reach.
TRANSPORT_ERROR = next(base for base in HfHubHTTPError.__mro__ if base.__name__ == "HTTPError")

DEFAULT_COMMIT_MESSAGE = "Upload a Vaswani model exported by vaswani"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer_config.json"
CARD_FILE = "README.md"
EXPORT_HINT = "export the model with vaswani.training.export.save_for_hub (vaswani-train does)"
# The "How to load" section of the model card, and the repo id quoted in each of its from_pretrained calls.
HOW_TO_LOAD = re.compile(r"^## How to load\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
QUOTED_REPO_ID = re.compile(r'(\.from_pretrained\(")[^"\n]*(")')
# The files save_for_hub writes under fixed names (model.save_pretrained, a fast tokenizer's save_pretrained, the
# metrics, the arguments and the card). With the shards the index names, the code files auto_map names and the
# images the card shows, they are all that is ever published.
EXPORT_FILES = frozenset({
    "config.json", "generation_config.json", WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
    "tokenizer.json", TOKENIZER_FILE, "special_tokens_map.json", "chat_template.jinja",
    CARD_FILE, "all_results.json", "training_args.json",
})  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
CARD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)")


class NotAnExportError(InputError):
    """The folder is not a Hub-ready export: the message names what is missing or broken."""


def check_export(folder: str | Path) -> None:
    """Raise NotAnExportError unless `folder` holds config.json with `auto_map`, the code files it (and
    `custom_pipelines`) names, intact safetensors weights and a tokenizer."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAnExportError(f"{folder} is not a folder.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotAnExportError(f"{folder} has no config.json: {EXPORT_HINT}.")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise NotAnExportError(f"{config_path} is not valid JSON ({error}).") from error
    auto_map = config.get("auto_map")
    if not auto_map or "AutoConfig" not in auto_map:
        raise NotAnExportError(
            f"{config_path} has no auto_map naming the code files, so the model could not load without vaswani "
            f"installed: {EXPORT_HINT}."
        )
    missing = [name for name in code_file_names(config) if not (folder / name).is_file()]
    if missing:
        raise NotAnExportError(f"{folder} lacks code files that config.json names: {', '.join(missing)}.")
    for weights in weight_files(folder):
        if (problem := safetensors_problem(weights)) is not None:
            raise NotAnExportError(f"{weights} is not an intact safetensors file ({problem}): export the model again.")
    if not (folder / TOKENIZER_FILE).is_file():
        raise NotAnExportError(f"{folder} has no tokenizer ({TOKENIZER_FILE}): {EXPORT_HINT}.")


def code_file_names(config: dict) -> list[str]:
    """The files that `auto_map` and `custom_pipelines` name ("modeling_vaswani.VaswaniModel" -> modeling_vaswani.py);
    references to code in another repository ("user/repo--module.Class") are not this folder's."""
    references = list((config.get("auto_map") or {}).values())
    references += [pipeline.get("impl") for pipeline in (config.get("custom_pipelines") or {}).values()]
    flat = [name for reference in references for name in (reference if isinstance(reference, list) else [reference])]
    return sorted({name.rsplit(".", 1)[0] + ".py" for name in flat if name and "--" not in name})


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the export: one file, or the shards its index names (all of which must exist)."""
    index_path = folder / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        try:
            shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise NotAnExportError(f"{index_path} is not a safetensors index ({error!r}).") from error
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            names = ", ".join(missing)
            raise NotAnExportError(f"{folder} lacks weight shards that {WEIGHTS_INDEX_FILE} names: {names}.")
        return [folder / name for name in shards]
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    raise NotAnExportError(f"{folder} has no weights ({WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}): {EXPORT_HINT}.")




@dataclass(frozen=True)
class Publication:
    """What a push of a folder uploads (`files`, names in the folder) and what it leaves out, with why (`skipped`)."""

    files: list[str]
    skipped: dict[str, str]

    def skipped_line(self) -> str:
        return ", ".join(f"{name} ({reason})" for name, reason in self.skipped.items())


def plan_publication(folder: str | Path) -> Publication:
    """Check that `folder` is an export (`check_export`) and divide its entries into the files an export writes, to
    publish, and the rest, skipped. Raise NotAnExportError for a pickle, or for a file to publish that is a link
    leading out of the folder; no file is read through such a link before it is refused (but shards are opened)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAnExportError(f"{folder} is not a folder.")
    names = sorted(entry.name for entry in os.scandir(folder))
    if pickles := [name for name in names if name.lower().endswith(PICKLE_SUFFIXES)]:
        raise NotAnExportError(
            f"{folder} holds pickle files, which run code when loaded and are never published: {', '.join(pickles)}. "
            f"Delete them or move them out of the folder (the weights are published as safetensors)."
        )
    refuse_links_out(folder, [name for name in names if name in EXPORT_FILES])  # before reading config.json
    check_export(folder)
    config = json.loads((folder / "config.json").read_text())
    published = EXPORT_FILES | set(code_file_names(config)) | {path.name for path in weight_files(folder)}
    published |= card_images(folder / CARD_FILE)
    refuse_links_out(folder, [name for name in names if name in published])
    files = [name for name in names if name in published and (folder / name).is_file()]
    skipped = {name + "/" * (folder / name).is_dir(): why_skipped(folder / name) for name in names if name not in files}
    return Publication(files, skipped)


def refuse_links_out(folder: Path, names: list[str]) -> None:
    inside = folder.resolve()
    for name in names:
        path = folder / name
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            raise NotAnExportError(
                f"{path} is a link to {path.resolve()}, outside the folder, and a push publishes only the folder's "
                f"own files: copy the file into the folder in place of the link, or remove it."
            )


def card_images(card_path: Path) -> set[str]:
    """The image files that the model card shows, by name (the loss curves an export copies in)."""
    text = card_path.read_text() if card_path.is_file() else ""
    return {name for name in CARD_IMAGE.findall(text) if name.lower().endswith(IMAGE_SUFFIXES)}


def why_skipped(path: Path) -> str:
    if path.name.startswith("."):
        return "hidden"
    if path.is_dir():
        return "a folder"
    if not path.is_file():
        return "not a regular file"
    return "not a file an export writes"


def name_repo_in_card(folder: Path, repo_id: str) -> None:
    """Make the model card's "How to load" snippet load `repo_id` (rewrites README.md only if it changes)."""
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        return
    text = card_path.read_text()
    renamed = HOW_TO_LOAD.sub(lambda section: QUOTED_REPO_ID.sub(rf"\g<1>{repo_id}\g<2>", section.group()), text)
    if renamed != text:
        card_path.write_text(renamed)


def push_folder(
    folder: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    token: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload the export in `folder` to the model repository `repo_id` (created if needed) and return the commit URL.

    `revision` names a branch, created from `main` if it does not exist. `private` applies when the repository is
    created; an existing repository keeps its visibility. `token` and `endpoint` default to huggingface_hub's
    settings (`HF_TOKEN` or `hf auth login`, `HF_ENDPOINT`). Unchanged files are not uploaded again; when nothing
    changed, no commit is made and the URL is that of the branch's head commit. The model card's "How to load"
    snippet is made to name `repo_id`, in the folder's README.md too. Only the files of `plan_publication(folder)`
    are uploaded; the others are named on stderr.
    """
    folder = Path(folder)
    publication = plan_publication(folder)
    check_destination(repo_id, revision)
    if publication.skipped:
        print(f"Not uploaded (an export does not write them): {publication.skipped_line()}", file=sys.stderr)
    name_repo_in_card(folder, repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    only = [glob.escape(name) for name in publication.files]  # exact names: the patterns are fnmatch's
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message, allow_patterns=only
    )
    return commit.commit_url


def check_destination(repo_id: str, revision: str | None) -> None:
    validate_repo_id(repo_id)
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        raise ValueError(f"revision={revision!r} is a commit: commits go to a branch (created if it does not exist).")


def push_trained_model(model_dir: str | Path, repo_id: str | None, metrics: dict | None = None) -> str | None:
    """`vaswani-train --push-to-hub REPO_ID`: push the exported model from the main process; None when not asked."""
    from accelerate import PartialState  # only training needs it

    if not repo_id or not PartialState().is_main_process:
        return None
    measured = ", ".join(f"{name} {value:.2f}" for name, value in (metrics or {}).items() if isinstance(value, float))
    message = f"Upload a model trained with vaswani-train ({measured})" if measured else DEFAULT_COMMIT_MESSAGE
    url = push_folder(model_dir, repo_id, commit_message=message)
    print(f"Pushed {model_dir} to {url}")
    return url


# ------------------------------------------------------------------------------------------------ vaswani-push


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaswani-push",
        description="Push a folder exported by vaswani (save_for_hub, vaswani-train) to the Hugging Face Hub.",
        epilog="The token and the Hub come from `hf auth login` or HF_TOKEN, and HF_ENDPOINT.",
    )
    parser.add_argument("folder", help="the exported model folder (config.json, code, weights, tokenizer, README.md)")
    parser.add_argument("repo_id", help="the model repository, as user/name or organization/name")
    parser.add_argument("--revision", help="push to this branch (created from main if it does not exist)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--message", default=DEFAULT_COMMIT_MESSAGE, help="the commit message")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be uploaded and what skipped, without asking the Hub"
    )
    return parser


def describe_publication(folder: str, repo_id: str, publication: Publication) -> str:
    lines = [f"Would upload {len(publication.files)} files of {folder} to {repo_id}: {', '.join(publication.files)}"]
    if publication.skipped:
        lines.append(f"Would skip {len(publication.skipped)}: {publication.skipped_line()}")
    return "\n".join(lines)


def describe_error(error: Exception) -> str:
    """One line for the user: the exception's first line, the Hub's reason, what to do about a refused token."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    message = f"{type(error).__name__}: {lines[0] if lines else 'no details'}"
    if isinstance(error, TRANSPORT_ERROR) and not isinstance(error, HfHubHTTPError):
        return f"cannot reach the Hub at {constants.ENDPOINT}: {message}"
    if not isinstance(error, HfHubHTTPError):
        return message
    if error.server_message and error.server_message not in message:
        message += f": {error.server_message.strip()}"
    if error.response is not None and error.response.status_code in (401, 403):
        message += " (check your token: `hf auth login` or HF_TOKEN, with write access to this repository)"
    return message


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        if arguments.dry_run:
            publication = plan_publication(arguments.folder)
            check_destination(arguments.repo_id, arguments.revision)
            print(describe_publication(arguments.folder, arguments.repo_id, publication))
            return 0
        url = push_folder(arguments.folder, arguments.repo_id, arguments.revision, arguments.private, arguments.message)
    except (OSError, ValueError, TRANSPORT_ERROR) as error:  # NotAnExportError is a ValueError, HTTP errors OSErrors
        print(f"vaswani-push: error: {describe_error(error)}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
