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


def write_atomically(path: str | Path, text: str) -> None:
    """Replace `path` by a file holding `text`, by a rename of a temporary sibling."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    remove_path(temporary)
    temporary.write_text(text)
    os.replace(temporary, path)


def remove_path(path: Path) -> None:
    """Remove a file, a symlink (not what it points to) or a folder tree, if there is one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def temporary_sibling(folder: str | Path) -> Path:
    """A new, empty `.NAME.tmp` beside `folder` to write into (what an interrupted write left there is removed)."""
    folder = Path(folder)
    temporary = folder.with_name(f".{folder.name}.tmp")
    remove_path(temporary)
    temporary.mkdir(parents=True)
    return temporary


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
        shutil.rmtree(temporary, ignore_errors=True)
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
