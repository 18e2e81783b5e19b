"""Writing files so that nothing is ever half-written, and checking the weight files others hand us.

Every layer writes files (training its checkpoints and exports, `vaswani-translate` its conversions), so these
pieces live in the lowest layer. A folder is written into a temporary sibling and renamed into place, and a file is
written to a temporary name and renamed: a process killed at any moment leaves the old complete version or the new
one, never a mixture.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open

from .errors import InputError


def write_atomically(path: str | Path, text: str) -> None:
    """Replace `path` by a file holding `text` (UTF-8), by a rename of a temporary sibling."""
    with written_atomically(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)


@contextmanager
def written_atomically(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary sibling of `path` to write the file into; when the block ends without error, it
    replaces `path` by a rename, which replaces a link at `path` rather than following it. The temporary is created
    here, exclusively and without following a link, so that a link planted under its name cannot carry the write
    elsewhere either; when the block fails, it is removed and `path` is left as it was."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{path} is a folder where a file is to be written; remove it, or write elsewhere.")
    temporary = temporary_name(path)
    remove_path(temporary)
    make_parent(temporary)
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
    try:
        yield temporary
    except BaseException:
        remove_path(temporary)
        raise
    os.replace(temporary, path)


def temporary_name(path: str | Path) -> Path:
    """The hidden sibling `.NAME.tmp` that a new version of `path` is written into before it takes its place."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def remove_path(path: Path) -> None:
    """Remove a file, a symlink (not what it points to) or a folder tree, if there is one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def temporary_sibling(folder: str | Path) -> Path:
    """A new, empty `.NAME.tmp` beside `folder` to write into (what an interrupted write left there is removed)."""
    temporary = temporary_name(folder)
    remove_path(temporary)
    make_parent(temporary)
    temporary.mkdir()
    return temporary


def make_parent(path: Path) -> None:
    """Create the folders above `path`; a file where one of them belongs is named."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        blocking = next(parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir())
        message = f"{blocking} is a file where a folder is to be made; remove it, or write elsewhere."
        raise InputError(message) from error


def replace_folder(temporary: Path, folder: str | Path) -> None:
    """Put the complete `temporary` in the place of `folder` by renames: the old folder moves aside to `.NAME.old`
    for an instant, and is removed once the new one is in place."""
    folder = Path(folder)
    previous = folder.with_name(f".{folder.name}.old")
    remove_path(previous)
    if folder.exists() or folder.is_symlink():
        os.replace(folder, previous)
    os.replace(temporary, folder)
    remove_path(previous)


@contextmanager
def replacing_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `folder` to write into; when the block ends without error, it takes the
    place of `folder` (`replace_folder`); when it fails, it is removed and `folder` is left as it was."""
    temporary = temporary_sibling(folder)
    try:
        yield temporary
    except BaseException:
        remove_path(temporary)
        raise
    replace_folder(temporary, folder)


def safetensors_problem(path: str | Path) -> str | None:
    """Why the `safetensors` library cannot open `path`, or None: it checks that the header is complete and that the
    tensors it describes cover the file exactly, so a truncated or padded copy is caught before anyone loads it."""
    try:
        with safe_open(path, framework="pt"):
            return None
    except (SafetensorError, OSError) as error:
        return str(error)


# Formats that torch.load or pickle read by running the code they hold: whoever loads one runs its author's code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Weights in those formats: transformers' and torch's, but not CTranslate2's `model.bin`, which is its own format.
PICKLE_WEIGHTS = ("pytorch_model*.bin", *(f"*{suffix}" for suffix in PICKLE_SUFFIXES if suffix != ".bin"))


def weights_problem(folder: str | Path) -> str | None:
    """Why the model weights in `folder` must not or cannot be loaded, or None. Weights only as pickles are refused
    unread: transformers would unpickle them, which runs whatever code the file holds (and torch's refusal of a
    crafted one suggests turning off its protection); with safetensors beside them, the pickles are never read. A
    safetensors file that `safetensors_problem` finds damaged is named."""
    folder = Path(folder)
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted({path.name for pattern in PICKLE_WEIGHTS for path in folder.glob(pattern)})
    if pickles and not safetensors:
        return (f"{folder} holds its weights only as pickles ({', '.join(pickles)}), which vaswani does not load: "
                "unpickling runs whatever code the file holds. Use a model saved as safetensors (save_pretrained "
                "writes model.safetensors); convert these only where you trust their source.")  # fmt: skip
    for file in safetensors:
        if (problem := safetensors_problem(file)) is not None:
            return f"cannot read the weights {file}, damaged or truncated ({problem}): export or download it again."
    return None
