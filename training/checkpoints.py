"""The checkpoint folder of a run, `OUTPUT_DIR/checkpoints`: its layout, atomic saving, verification, resume
resolution and pruning. No other module knows the names of the files inside a checkpoint.

    checkpoints/
        latest                   the name of the newest complete checkpoint
        step-0000500/            Accelerate's `save_state` (model, optimiser, scheduler, RNG states),
            training_state.json  our training state (JSON, never a pickle),
            tokenizer/           the tokenizer the checkpoint's ids mean,
            manifest.json        written last: relative path, size and sha256 of every other file.

A checkpoint is written into a temporary folder, sealed with its manifest and renamed, so an interrupted run never
leaves a broken latest checkpoint; and nothing in a checkpoint is unpickled. A checkpoint folder may come from
someone else, and unpickling runs code, so the training state is JSON (not Accelerate's pickled
`register_for_checkpointing`), every torch file is loaded with `weights_only=True`, and the manifest is verified
before anything is read.
"""

import errno
import hashlib
import json
import pickle
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from accelerate.utils import load as load_data_only  # torch.load with weights_only=True and numpy's RNG types allowed

from vaswani.configuration.errors import InputError
from vaswani.configuration.files import remove_path, replace_folder, temporary_name, temporary_sibling
from vaswani.configuration.files import write_atomically

CHECKPOINTS = "checkpoints"
LATEST = "latest"  # a file naming the newest complete checkpoint
CHECKPOINT_NAME = re.compile(r"step-\d+")
STATE_FILE = "training_state.json"
MANIFEST = "manifest.json"  # written last: relative path, size and sha256 of every other file of the checkpoint
TOKENIZER = "tokenizer"  # the tokenizer the checkpoint's ids mean, saved inside it
MODEL_WEIGHTS = "model.safetensors"  # Accelerate's name for the model in `save_state`
RNG_STATE_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed from exactly as it was saved."""


@dataclass
class TrainingState:
    """Where the run is, saved with every checkpoint: the step, the data position, and the loss history."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed on each process
    # --streaming: [epoch, batches_in_epoch] of each process, which reads its own stream and so ends its epochs at
    # its own pace (empty without streaming, where every process is where `epoch` and `batches_in_epoch` say).
    process_positions: list[list[int]] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)
    eval_log: list[dict] = field(default_factory=list)
    # This process's share of each step's loss since the last log: kept across a resume, so that the first average
    # logged after it covers the same steps as in an uninterrupted run.
    recent_losses: list[float] = field(default_factory=list)
    # The options that define the run (TrainArguments.run_definition): a resume must give the same.
    run_definition: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Fields from JSON, checked against their defaults' types (one missing keeps its default)."""
        if not isinstance(state, dict):
            raise ValueError(f"expected an object of fields, got {type(state).__name__}")
        defaults = asdict(TrainingState())
        wrong = sorted(state.keys() - defaults.keys()) + [
            name for name, value in state.items() if name in defaults and None not in (value, defaults[name])
            and type(value) is not type(defaults[name])
        ]  # fmt: skip
        if wrong:
            raise ValueError(f"unexpected field or type: {', '.join(wrong)}")
        self.__dict__.update(state)


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def save_checkpoint(
    accelerator: Accelerator, state: TrainingState, output_dir: str | Path, keep: int, tokenizer=None,
    per_process_positions: bool = False,
) -> Path:
    """`save_state` (model, optimiser, scheduler, RNG states), the training state as JSON and the tokenizer into a
    temporary folder, sealed by its manifest, then an atomic rename and an atomic update of `latest`: a run killed
    at any moment leaves the previous checkpoint intact and named by `latest`. The newest `keep` checkpoints stay.
    `per_process_positions` records where each process is in its own data stream (--streaming)."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:07d}"
    temporary = temporary_name(final)
    saved_state = replace(state, recent_losses=summed_recent_losses(state, accelerator))
    if per_process_positions:
        saved_state.process_positions = gather_object([[state.epoch, state.batches_in_epoch]])
    try:
        write_checkpoint(accelerator, saved_state, final, tokenizer)
    except (OSError, RuntimeError) as error:  # a full disk: the OS says ENOSPC, torch "unexpected pos"
        if accelerator.is_main_process:
            remove_path(temporary)
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(error)
        raise CheckpointError(
            f"Could not write the checkpoint {final} ({type(error).__name__}: {str(error)[:200]}); nothing of it was "
            f"kept, and {root / LATEST} still names the last complete one. "
            f"{'Free space on that disk' if full else 'Fix that'}, then resume with --resume latest."
        ) from error
    if accelerator.is_main_process:
        replace_folder(temporary, final)
        write_atomically(root / LATEST, final.name)
        prune_checkpoints(root, keep)
    accelerator.wait_for_everyone()
    return final


def write_checkpoint(accelerator: Accelerator, state: TrainingState, final: Path, tokenizer=None) -> None:
    """Every file of the checkpoint `final` into its temporary sibling, sealed by its manifest (every process takes
    part; a full disk on one of them is reported by the main process)."""
    temporary = temporary_name(final)
    if accelerator.is_main_process:
        temporary_sibling(final)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps(state.state_dict(), indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary / TOKENIZER)
        write_manifest(temporary)


def summed_recent_losses(state: TrainingState, accelerator: Accelerator) -> list[float]:
    """The whole loss of each step since the last log (the sum of every process's share)."""
    if not state.recent_losses:
        return []
    return accelerator.reduce(torch.tensor(state.recent_losses, device=accelerator.device), "sum").tolist()


def write_manifest(folder: Path) -> None:
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST)
    entries = {path.relative_to(folder).as_posix(): file_entry(path) for path in files}
    write_atomically(folder / MANIFEST, json.dumps(entries, indent=1))


def file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def checkpoint_folders(root: Path) -> list[Path]:
    """The complete checkpoint folders under `root`, oldest first."""
    return sorted(path for path in root.glob("step-*") if CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir())


def prune_checkpoints(root: Path, keep: int) -> None:
    checkpoints = checkpoint_folders(root)
    for old in checkpoints[: max(len(checkpoints) - keep, 0)]:
        remove_path(old)


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint named by --resume: a folder, or 'latest' (None when the output folder has none yet)."""
    if resume is None:
        return None
    if resume == LATEST:
        return latest_checkpoint(checkpoint_root(output_dir))
    return checked_checkpoint_folder(Path(resume))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names, which must be a checkpoint folder of this run: a `latest` naming an absolute
    path, `..` or a symlink out of the folder is refused, so that a downloaded run cannot point a resume elsewhere."""
    latest = root / LATEST
    if not (latest.exists() or latest.is_symlink()):
        return None
    try:
        name = latest.read_text(encoding="utf-8").strip() if latest.is_file() and not latest.is_symlink() else None
    except (OSError, UnicodeDecodeError):
        name = None
    if name is None:
        raise CheckpointError(f"{latest} is not a readable file naming a checkpoint; it is not followed. Remove it, "
                              f"or write the name of a checkpoint folder of {root} into it.")  # fmt: skip
    folder = root / name
    if not CHECKPOINT_NAME.fullmatch(name) or folder.resolve().parent != root.resolve():
        raise CheckpointError(
            f"{latest} names {name!r}, which is not a checkpoint folder inside {root}; it is not followed. Name a "
            f"checkpoint with --resume {root / 'step-NNNNNNN'}, or write its folder name into {latest}."
        )
    return checked_checkpoint_folder(folder)


def checked_checkpoint_folder(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: no such folder; give a checkpoint folder or 'latest'.")
    if (path / "config.json").exists() and not (path / MANIFEST).exists():
        raise CheckpointError(
            f"--resume {path} is a model folder, not a checkpoint: start a new run from its weights with "
            f"--init-model {path}, or resume from a folder of OUTPUT_DIR/{CHECKPOINTS}."
        )
    if not (path / MANIFEST).exists():
        raise CheckpointError(
            f"--resume {path} is not a checkpoint folder of vaswani-train (it has no {MANIFEST}, which every complete "
            f"checkpoint has); resume from a folder named by OUTPUT_DIR/{CHECKPOINTS}/{LATEST}."
        )
    return path


def load_checkpoint(accelerator: Accelerator, folder: Path, state: TrainingState) -> None:
    """Verify `folder` against its manifest, then load it data-only: Accelerate's files (model, optimiser,
    scheduler, RNG states: safetensors or `torch.load(weights_only=True)`) and our JSON training state. Under
    DeepSpeed, its engine reads its own files with its own loader, which this guarantee does not cover."""
    raise_if_any(accelerator, checkpoint_problem(folder) if accelerator.is_main_process else None)
    # Accelerate skips an RNG file it cannot read with only a log line, and the run would silently stop being an
    # exact resume: each process reads its own file first, data-only, and a failure stops every process.
    raise_if_any(accelerator, rng_state_problem(folder / f"random_states_{accelerator.process_index}.pkl"))
    try:
        accelerator.load_state(str(folder), load_kwargs={"weights_only": True})
    except Exception as error:  # torch and Accelerate raise many types; the user needs the file
        raise CheckpointError(f"{unloadable_file(folder) or folder} cannot be loaded: {error}") from error
    try:
        state.load_state_dict(json.loads((folder / STATE_FILE).read_text()))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder / STATE_FILE} cannot be read: {error}") from error
    # Saved as whole-step losses; each process holds its share, and logging sums the shares.
    state.recent_losses = [loss / accelerator.num_processes for loss in state.recent_losses]
    if state.process_positions:  # --streaming: each process resumes its own stream
        if len(state.process_positions) != accelerator.num_processes:
            raise CheckpointError(
                f"{folder} was saved by {len(state.process_positions)} processes, each reading its own part of the "
                f"stream; resume it with as many (not {accelerator.num_processes}), or the parts would not match."
            )
        state.epoch, state.batches_in_epoch = state.process_positions[accelerator.process_index]


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with `folder` as a checkpoint (a file missing, changed or foreign to it), or None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if not isinstance(manifest, dict) or not all(isinstance(entry, dict) for entry in manifest.values()):
            raise ValueError("not a mapping of file names to sizes and hashes")
    except (OSError, ValueError) as error:
        return f"{folder / MANIFEST} cannot be read ({error}); resume from another checkpoint."
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()} - {MANIFEST}
    if pickles := sorted(name for name in present if re.fullmatch(r"custom_checkpoint_\d+\.pkl", Path(name).name)):
        return (f"{folder / pickles[0]} is a pickled object, which vaswani-train never writes and will not load "
                "(unpickling can run any code): this checkpoint was not written by this version.")  # fmt: skip
    if foreign := sorted(present - manifest.keys()):
        return f"{folder / foreign[0]} is not part of the checkpoint (its {MANIFEST} does not list it); remove it."
    for metadata in sorted(folder.rglob(".metadata")):
        try:
            with metadata.open("rb") as file:
                DistributedCheckpointMetadataUnpickler(file).load()
        except Exception as error:  # pickle raises many types on a foreign or damaged file
            return f"{metadata} is not the metadata of a sharded (FSDP) checkpoint ({error}); it is not loaded."
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"Checkpoint {folder} is incomplete: {path} is missing."
        if file_entry(path) != expected:
            return (f"{path} differs from the checkpoint's {MANIFEST} (size or sha256): the file was changed or "
                    "damaged after it was saved; resume from another checkpoint.")  # fmt: skip
    return None


class DistributedCheckpointMetadataUnpickler(pickle.Unpickler):
    """FSDP's sharded checkpoints keep a `.metadata` file that torch.distributed.checkpoint reads with plain
    `pickle.load`, which Accelerate offers no way to make data-only (the shards themselves are read with
    `weights_only=True`). So each is unpickled here first, allowing only the types that file holds: its metadata
    classes, torch sizes, dtypes and layouts, and paths."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
               ("pathlib", "WindowsPath"), ("collections", "OrderedDict")}  # fmt: skip

    def find_class(self, module: str, name: str):
        importable = module.split(".")[0] in ("torch", "pathlib", "collections")  # importing runs no foreign code
        found = super().find_class(module, name) if importable else None
        checkpoint_type = module.startswith("torch.distributed.checkpoint.") and isinstance(found, type)
        dtype = module == "torch" and isinstance(found, torch.dtype)
        if (module, name) in self.ALLOWED or checkpoint_type or dtype:
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not a type of checkpoint metadata")


def unloadable_file(folder: Path) -> Path | None:
    """The first torch file of `folder` that does not load data-only (only looked for once loading failed)."""
    for path in sorted([*folder.glob("*.bin"), *folder.glob("*.pkl")]):
        try:
            load_data_only(path)
        except Exception:  # any failure names this file
            return path
    return None


def rng_state_problem(path: Path) -> str | None:
    required = RNG_STATE_KEYS + (("torch_cuda_manual_seed",) if torch.cuda.is_available() else ())
    try:
        states = load_data_only(path)
    except Exception as error:  # torch raises many types for a missing, truncated or non-data file
        reason = f"{type(error).__name__}: {str(error)[:300]}"
        return f"{path} cannot be read ({reason}); without it the resume is not exact."
    if not isinstance(states, dict) or any(key not in states for key in required):
        return f"{path} lacks random states this machine needs ({', '.join(required)}); the resume would not be exact."
    return None


def raise_if_any(accelerator: Accelerator, problem: str | None) -> None:
    """Raise on every process when any process found a problem (one raising alone would leave the others waiting)."""
    problems = [found for found in gather_object([problem]) if found]
    if problems:
        raise CheckpointError(problems[0])


def last_checkpoints(output_dir: str | Path, count: int) -> list[Path]:
    """The `count` newest checkpoint folders of a run, oldest first; an error says how many there are."""
    root = checkpoint_root(output_dir)
    checkpoints = checkpoint_folders(root)
    if count < 1:
        raise InputError(f"Average at least 1 checkpoint, got {count}.")
    if count > len(checkpoints):
        raise InputError(
            f"Cannot average the last {count} checkpoints: {root} holds {len(checkpoints)}. Average at most "
            f"{len(checkpoints)}, or train with --save-total-limit {count} (or more) so that {count} are kept."
        )
    return checkpoints[-count:]


def checkpoint_weights(folder: Path) -> Path:
    """The model's weights in a checkpoint (Accelerate's `save_state` name), which only unsharded runs write."""
    weights = folder / MODEL_WEIGHTS
    if not weights.is_file():
        raise InputError(
            f"{folder} has no {MODEL_WEIGHTS}: only unsharded (not FSDP-sharded) checkpoints are averaged."
        )
    return weights


def checkpoint_tokenizer(folder: Path) -> Path:
    """Where a checkpoint keeps the tokenizer its ids mean."""
    return folder / TOKENIZER


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.split("-")[1])


def saved_run_definition(folder: Path) -> dict:
    """The options that defined the run a checkpoint belongs to ({} for a checkpoint from before they were kept)."""
    try:
        saved = json.loads((folder / STATE_FILE).read_text()).get("run_definition", {})
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{folder / STATE_FILE} cannot be read: {error}") from error
    return saved if isinstance(saved, dict) else {}


def check_not_mixed(output_dir: str | Path, resume_from: Path | None) -> None:
    """A run never mixes its checkpoints with another run's: a new run, or a resume from another folder's
    checkpoint, is refused in a folder that holds checkpoints, and a resume from a checkpoint other than the newest
    (whose later ones it would overwrite or prune in favour of its own) is refused too."""
    root = checkpoint_root(output_dir)
    existing = checkpoint_folders(root)
    if existing and (resume_from is None or resume_from.resolve().parent != root.resolve()):
        started = "a new run" if resume_from is None else f"continuing {resume_from} here"
        raise CheckpointError(
            f"{root} holds the checkpoints of another run ({', '.join(folder.name for folder in existing)}): "
            f"{started} would mix its checkpoints with them. Resume that run with --resume latest, or give this run "
            "another --output-dir."
        )
    later = [folder for folder in existing if resume_from is not None and folder.name > resume_from.name]
    if later:
        raise CheckpointError(
            f"--resume {resume_from} is not the newest checkpoint of {root} ({later[-1].name} is): continuing from it "
            "would overwrite the later ones. Resume with --resume latest, or copy the checkpoint into a new "
            "--output-dir and resume from there."
        )
