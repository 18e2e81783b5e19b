"""The output folder of a run (`--output-dir`): one run at a time, and nothing written outside it.

Invariant: everything `vaswani-train` writes lands inside the folder the user named, and no write follows a link
planted there. The folder may come from someone else (a shared disk, a copied run), so before anything is read or
written the whole tree must hold only what a run itself makes, regular files and folders: a symbolic link (which
would carry a write, a truncation or a removal elsewhere), a FIFO (which would block a read forever), a socket or a
device stops the run with its path named. Every write then goes through a rename of a fresh temporary file or folder
(`vaswani.configuration.files`), which replaces a name without following it.

The folder itself may be reached through a link the user made (`outputs -> /scratch/outputs`): that is their choice
of folder, not something planted in it.
"""

import fcntl
import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from vaswani.configuration.errors import InputError
from vaswani.training.checkpoints import CHECKPOINTS, LATEST

# The layout of an output folder: the files and the folders a run writes there.
LOCK_FILE = ".vaswani-train.lock"  # holds the pid and host of the run writing to the output folder
TRAINING_LOG = "training_log.json"
LOSS_CURVES = "loss_curves.png"
WARM_START_SUMMARY = "warm_start_comparison.json"
FINAL_MODEL = "model"  # the exported, Hub-ready model
BEST = "best"  # --keep-best: the best weights so far and best.json (step and metrics)
TENSORBOARD = "tensorboard"  # Accelerate's tracker logs
FILES = (LOCK_FILE, TRAINING_LOG, LOSS_CURVES, WARM_START_SUMMARY, f"{CHECKPOINTS}/{LATEST}")
FOLDERS = (CHECKPOINTS, FINAL_MODEL, BEST, TENSORBOARD)
KINDS = {stat.S_ISLNK: "a symbolic link", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket",
         stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}  # fmt: skip
logger = logging.getLogger(__name__)


def foreign_entry(folder: Path) -> str | None:
    """The first entry of the tree under `folder` that is neither a regular file nor a folder, described, or None."""
    for root, folders, files in os.walk(folder):  # os.walk follows no link to a folder
        for name in sorted([*folders, *files]):
            path = Path(root) / name
            mode = path.lstat().st_mode
            for test, kind in KINDS.items():
                if test(mode):
                    return f"{path} is {kind}"
    return None


def misplaced_entry(folder: Path) -> str | None:
    """A folder where the run writes one of its files, or something else where it makes one of its folders."""
    for name in FILES:
        if (folder / name).is_dir():
            return f"{folder / name} is a folder, where the run writes a file"
    for name in FOLDERS:
        if (folder / name).exists() and not (folder / name).is_dir():
            return f"{folder / name} is a file, where the run makes a folder"
    return None


def check_output_folder(folder: Path) -> None:
    """Refuse an output folder that holds anything a run would not have written itself (see the module's text)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--output-dir {folder} is a file; name a folder (it is created if missing).")
    if folder.is_dir() and (entry := foreign_entry(folder) or misplaced_entry(folder)) is not None:
        raise InputError(
            f"--output-dir {folder} is not a folder vaswani-train wrote: {entry}. A run writes only regular files and "
            "folders there and follows no link out of it; remove that entry, or give this run another --output-dir."
        )


@contextmanager
def locked_output_folder(folder: Path) -> Iterator[None]:
    """Check the output folder, then hold its lock for the block: two runs writing one folder would interleave
    checkpoints and race on `latest`. Only the main process checks and locks; a refusal is raised on every process."""
    lock, problem = None, None
    # The first PartialState fixes the process group: without GPUs it must be gloo, as in build_accelerator, or each
    # process of a multi-process CPU run would run alone.
    if PartialState(cpu=not torch.accelerator.is_available()).is_main_process:
        try:
            check_output_folder(folder)
            lock = take_lock(folder / LOCK_FILE)
        except InputError as error:
            problem = str(error)
    if problems := [found for found in gather_object([problem]) if found]:
        raise InputError(problems[0])
    try:
        yield
    finally:
        if lock is not None:
            os.ftruncate(lock, 0)  # an empty lock file is a released one; it stays, so no two runs lock two inodes
            os.close(lock)  # closing releases the flock


def take_lock(path: Path) -> int:
    """An exclusive `flock` on `path` (opened without following a link), which the kernel releases when the holder
    dies however it dies (kill -9 too): a lock file still naming a process whose flock is gone is stale, and is
    taken over with a warning. Returns the open file descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as error:  # a folder, a link or an unwritable file in its place
        raise InputError(f"Cannot open the lock file {path} ({error.strerror}); remove what is there.") from error
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(read_all(descriptor))
        os.close(descriptor)
        raise InputError(
            f"{path.parent} is in use by another vaswani-train run ({holder}; lock file {path}): wait for it to "
            "finish, or give this run another --output-dir."
        ) from None
    if previous := read_all(descriptor).strip():
        logger.warning(f"Taking over {path} from {lock_holder(previous)}, which ended without releasing it.")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n").encode(), 0)
    return descriptor


def read_all(descriptor: int) -> str:
    return os.pread(descriptor, 1 << 16, 0).decode("utf-8", errors="replace")


def lock_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"process {holder['pid']} on {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no readable pid"
