"""One Accelerate training loop for every objective: accumulation, clipping, evaluation, checkpoints, resume.

The same code runs on a laptop CPU, under `torchrun`/`accelerate launch` with N processes (DDP), and under
FSDP or DeepSpeed through an Accelerate config file. What Accelerate does is left to it: device placement, DDP
wrapping, mixed precision, `accumulate`, trackers, `save_state`/`load_state` (model, optimiser, scheduler and RNG
states), `skip_first_batches`.

What is ours, and each says why where it happens: the loss is weighted by token across the whole accumulated,
distributed batch (so N processes or N micro-batches equal one large batch); checkpoints are written to a temporary
folder, sealed with a manifest of every file's size and sha256, and renamed, so an interrupted run never leaves a
broken latest checkpoint; and nothing in a checkpoint is unpickled. A checkpoint folder may come from someone else,
and unpickling runs code, so the training state is JSON (`training_state.json`, not Accelerate's pickled
`register_for_checkpointing`), every torch file is loaded with `weights_only=True`, and the manifest is verified
before anything is read.
"""

import hashlib
import json
import math
import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, gather_object, set_seed
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, send_to_device
from accelerate.utils import load as load_data_only  # torch.load with weights_only=True and numpy's RNG types allowed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from vaswani.training.arguments import InputError, TrainArguments
from vaswani.training.batching import global_batch_description, token_batch_loader
from vaswani.training.data import EpochLengthGroupedSampler, StreamBatches, example_lengths

CHECKPOINTS = "checkpoints"
LATEST = "latest"  # a file naming the newest complete checkpoint
CHECKPOINT_NAME = re.compile(r"step-\d+")
STATE_FILE = "training_state.json"
MANIFEST = "manifest.json"  # written last: relative path, size and sha256 of every other file of the checkpoint
TOKENIZER = "tokenizer"  # the tokenizer the checkpoint's ids mean, saved inside it
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


def build_accelerator(args: TrainArguments, log_with: str | None = "tensorboard") -> Accelerator:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.accelerator.is_available():
        # Accelerate (1.15) would quietly run the DeepSpeed config as plain data parallel, or fail importing DeepSpeed.
        raise InputError(
            "DeepSpeed through Accelerate needs GPUs: without them Accelerate does not run DeepSpeed. On CPUs, use "
            "training/accelerate_configs/fsdp_cpu.yaml (FSDP2) or torchrun (data parallel)."
        )
    mixed_precision = args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        # Without an accelerator, say so: Accelerate then runs `torchrun` processes as a gloo (MULTI_CPU) group.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=mixed_precision,
        # We always feed whole accumulation windows, also across epoch ends: sync on the window, not the loader.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # Each process takes its share of one global batch, so that N processes step as one process would; token-count
        # batches vary in size, so each process takes whole batches in turn instead (training/batching.py).
        dataloader_config=DataLoaderConfiguration(split_batches=args.max_tokens is None),
        log_with=log_with,
        project_dir=args.output_dir,
    )
    return with_requested_fsdp(accelerator)


def with_requested_fsdp(accelerator: Accelerator) -> Accelerator:
    """FSDP when the Accelerate config asks for it, also on processes without a GPU.

    Accelerate (1.15) turns FSDP on only for GPU-like process groups; with `use_cpu` it silently runs the processes
    as plain data parallel instead. FSDP2 itself runs on CPU (gloo), so the state is set to what the config asked
    for: the FSDP path, sharded checkpoints included, then runs (and is tested) on CPU as it does on GPUs.
    """
    requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if requested and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # Both: Accelerate re-reads the process state into the accelerator state when it builds another.
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
        if accelerator.mixed_precision != "no":
            accelerator.state.fsdp_plugin.set_mixed_precision(accelerator.mixed_precision)
    return accelerator


def training_loader(dataset, collator, args: TrainArguments, accelerator: Accelerator) -> DataLoader:
    """Batches of similar lengths, `batch_size` examples (or `max_tokens`) per process, in an order fixed by (seed,
    epoch). A stream (--streaming) is this process's own already, so Accelerate is not to prepare its loader."""
    if args.streaming:
        batches = StreamBatches(dataset, args.seed, args.shuffle_buffer, args.batch_size, args.max_tokens)
        return DataLoader(batches, batch_size=None, collate_fn=collator, generator=own_generator(args.seed))
    if args.max_tokens is not None:
        return token_batch_loader(
            dataset, collator, args.max_tokens, accelerator.num_processes, args.seed, True, own_generator(args.seed)
        )
    global_batch = args.batch_size * accelerator.num_processes
    sampler = EpochLengthGroupedSampler(global_batch, example_lengths(dataset), args.seed)
    return DataLoader(
        dataset, batch_size=global_batch, sampler=sampler, collate_fn=collator, drop_last=True,
        generator=own_generator(args.seed),
    )  # fmt: skip


def evaluation_loader(dataset, collator, args: TrainArguments, accelerator: Accelerator) -> DataLoader:
    if args.max_tokens is not None:
        return token_batch_loader(
            dataset, collator, args.max_tokens, accelerator.num_processes, args.seed, False, own_generator(args.seed)
        )
    global_batch = args.batch_size * accelerator.num_processes
    return DataLoader(dataset, batch_size=global_batch, collate_fn=collator, generator=own_generator(args.seed))


def own_generator(seed: int) -> torch.Generator:
    """Starting an iterator over a DataLoader draws a seed from its generator, by default torch's global one, which
    dropout also draws from: with its own, evaluating or resuming does not shift the dropout masks of training."""
    return torch.Generator().manual_seed(seed)


def build_optimizer_and_scheduler(model, args: TrainArguments):
    """Adam with beta2 0.98 and eps 1e-9 and the paper's warm-up + inverse square root schedule (§5.3)."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.peak_learning_rate(),
        betas=(0.9, 0.98),
        eps=1e-9,
        weight_decay=args.weight_decay,
    )
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=args.max_steps
    )
    return optimizer, scheduler


def micro_batches_forever(loader, state: TrainingState, accelerator: Accelerator):
    """The batches of epoch after epoch, starting where `state` says (a resumed run skips what it consumed)."""
    if isinstance(loader.dataset, StreamBatches):
        yield from stream_micro_batches(loader, state, accelerator)
        return
    while True:
        loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        for batch in batches:
            state.batches_in_epoch += 1
            yield batch
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0


def stream_micro_batches(loader: DataLoader, state: TrainingState, accelerator: Accelerator):
    """`micro_batches_forever` for a stream: the skipped batches are dropped before they are collated, so that the
    collator draws the random numbers (mlm masks) it drew in the uninterrupted run."""
    while True:
        loader.dataset.set_epoch(state.epoch)
        loader.dataset.skip = state.batches_in_epoch
        for batch in loader:
            state.batches_in_epoch += 1
            yield send_to_device(batch, accelerator.device)
        if state.batches_in_epoch == 0:  # a whole epoch (a resumed one ends with at least its skipped batches)
            raise InputError(
                f"Process {accelerator.process_index} read a whole epoch of its stream without making one batch: the "
                "dataset is too small for --batch-size (or --max-tokens) on this many processes."
            )
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0


def labelled_tokens(batches: list[dict], accelerator: Accelerator) -> torch.Tensor:
    """Labelled tokens in the whole step: every micro-batch of every process."""
    count = sum((batch["labels"] != -100).sum() for batch in batches)
    return accelerator.reduce(torch.as_tensor(count, device=accelerator.device), reduction="sum")


def train_step(model, optimizer, scheduler, batches: list[dict], args: TrainArguments, accelerator) -> float:
    """One optimiser step over `gradient_accumulation_steps` micro-batches; returns this process's share of the
    step's loss (the shares of all processes sum to the loss of the step)."""
    num_items_in_batch = labelled_tokens(batches, accelerator)
    step_loss = 0.0
    for batch in batches:
        with accelerator.accumulate(model):
            loss = model(**batch, num_items_in_batch=num_items_in_batch).loss
            # The loss is already a per-token mean over the global step; `backward` divides by the micro-batch
            # count and DDP averages over processes, so both are multiplied back (as in Accelerate's guide to
            # accumulation with variable-size samples).
            accelerator.backward(loss * args.gradient_accumulation_steps * accelerator.num_processes)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        step_loss += loss.item()
    return step_loss


@torch.no_grad()
def evaluate_loss(model, loader, accelerator: Accelerator) -> dict[str, float]:
    """Token-weighted loss over the whole loader (no label smoothing: the model is in eval mode) and perplexity."""
    model.eval()
    total_loss = torch.zeros((), device=accelerator.device)
    total_tokens = torch.zeros((), device=accelerator.device)
    for batch in loader:
        tokens = (batch["labels"] != -100).sum()
        total_loss += model(**batch, num_items_in_batch=1, skip_logits=True).loss.float()  # a sum over tokens
        total_tokens += tokens
    model.train()
    loss = (accelerator.reduce(total_loss) / accelerator.reduce(total_tokens).clamp(min=1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def checkpoint_root(args: TrainArguments) -> Path:
    return Path(args.output_dir) / CHECKPOINTS


def save_checkpoint(accelerator: Accelerator, state: TrainingState, args: TrainArguments, tokenizer=None) -> Path:
    """`save_state` (model, optimiser, scheduler, RNG states), the training state as JSON and the tokenizer into a
    temporary folder, sealed by its manifest, then an atomic rename and an atomic update of `latest`: a run killed
    at any moment leaves the previous checkpoint intact and named by `latest`."""
    root = checkpoint_root(args)
    final, temporary = root / f"step-{state.step:07d}", root / f"tmp-step-{state.step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    saved_state = replace(state, recent_losses=summed_recent_losses(state, accelerator))
    if args.streaming:
        saved_state.process_positions = gather_object([[state.epoch, state.batches_in_epoch]])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps(saved_state.state_dict(), indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary / TOKENIZER)
        write_manifest(temporary)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        write_atomically(root / LATEST, final.name)
        prune_checkpoints(root, args.save_total_limit)
    accelerator.wait_for_everyone()
    return final


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


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def prune_checkpoints(root: Path, keep: int) -> None:
    checkpoints = sorted(root.glob("step-*"))
    for old in checkpoints[: max(len(checkpoints) - keep, 0)]:
        shutil.rmtree(old)


def resolve_resume(args: TrainArguments) -> Path | None:
    """The checkpoint named by --resume: a folder, or 'latest' (None when the output folder has none yet)."""
    if args.resume is None:
        return None
    if args.resume == LATEST:
        return latest_checkpoint(checkpoint_root(args))
    return checked_checkpoint_folder(Path(args.resume))


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names, which must be a checkpoint folder of this run: a `latest` naming an absolute
    path, `..` or a symlink out of the folder is refused, so that a downloaded run cannot point a resume elsewhere."""
    latest = root / LATEST
    if not latest.exists():
        return None
    name = latest.read_text().strip()
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


def prepare_for_fsdp2(model, accelerator: Accelerator) -> None:
    """What Accelerate's FSDP2 wrapping needs to know about this model, set before it wraps it."""
    # One config serves every objective, but the masked LM has no decoder layers and the causal LM no encoder layers,
    # and Accelerate refuses a layer class to wrap that the model lacks: wrap the layer classes this view has.
    plugin = accelerator.state.fsdp_plugin
    present = {type(module).__name__ for module in model.modules()}
    names = plugin.transformer_cls_names_to_wrap or model._no_split_modules
    plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]
    # With `fsdp_cpu_ram_efficient_loading`, transformers leaves the weights a checkpoint lacks (a warm start's
    # cross-attention) on the meta device in all processes but the first, whose weights Accelerate then broadcasts.
    # Accelerate matches the optimiser's parameters by storage address, which meta tensors lack: give them storage.
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_meta:
                materialized = torch.zeros_like(parameter, device=accelerator.device)
                module.register_parameter(name, torch.nn.Parameter(materialized, parameter.requires_grad))
    # FSDP2 refuses a tensor held by two of its units. Accelerate gives the embedding matrix and a tied lm_head one
    # unit, but each stack's `embed_tokens` is a module of its own holding that same matrix (tied by parameter):
    # made the same module as `model.shared`, every use of the matrix is in that one unit.
    model.set_input_embeddings(model.get_input_embeddings())


def train(
    model, train_dataset, eval_dataset, collator, args: TrainArguments, accelerator: Accelerator, tokenizer=None,
    selection=None,
) -> TrainingState:
    """Train `model` for `args.max_steps` optimiser steps; evaluates, logs and checkpoints (with `tokenizer`);
    `selection` (training/selection.py) adds validation BLEU, the best weights and early stopping."""
    set_seed(args.seed)
    if accelerator.is_fsdp2:
        prepare_for_fsdp2(model, accelerator)
    optimizer, scheduler = build_optimizer_and_scheduler(model, args)
    train_loader = training_loader(train_dataset, collator, args, accelerator)
    eval_loader = evaluation_loader(eval_dataset, collator, args, accelerator)
    if args.streaming:  # each process's loader reads its own stream: Accelerate would shard it again
        model, optimizer, scheduler, eval_loader = accelerator.prepare(model, optimizer, scheduler, eval_loader)
    else:
        model, optimizer, scheduler, train_loader, eval_loader = accelerator.prepare(
            model, optimizer, scheduler, train_loader, eval_loader
        )
    # Token-count batches are dealt out whole (split_batches=False), and Accelerate then steps the schedule once per
    # process at each step, as for a per-process schedule; ours counts optimiser steps however many processes.
    scheduler.split_batches = True
    state = TrainingState()
    if (resume_from := resolve_resume(args)) is not None:
        accelerator.print(f"Resuming from {resume_from}")
        load_checkpoint(accelerator, resume_from, state)
    elif args.resume == LATEST:
        accelerator.print(
            f"--resume latest: {checkpoint_root(args)} holds no checkpoint yet; training starts from step 0."
        )
    accelerator.init_trackers("tensorboard", config={k: v for k, v in asdict(args).items() if v is not None})
    accelerator.print(f"Batch per step: {global_batch_description(args, accelerator.num_processes)}")

    model.train()
    batches = micro_batches_forever(train_loader, state, accelerator)
    progress = tqdm(
        total=args.max_steps, initial=state.step, desc=f"Training ({args.objective})",
        disable=not accelerator.is_local_main_process,
    )  # fmt: skip
    while state.step < args.max_steps:
        step_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
        state.recent_losses.append(train_step(model, optimizer, scheduler, step_batches, args, accelerator))
        state.step += 1
        progress.update(1)
        if state.step % args.logging_steps == 0 or state.step == args.max_steps:
            log_training(accelerator, state, scheduler, progress)
        if state.step % args.eval_steps == 0 or state.step == args.max_steps:
            log_evaluation(accelerator, state, evaluate_loss(model, eval_loader, accelerator), progress)
        # Validation BLEU, best weights, early stopping (training/selection.py), before the checkpoint records them.
        stop_early = selection is not None and selection.after_step(model, state, accelerator)
        if state.step % args.save_steps == 0 or state.step == args.max_steps:
            save_checkpoint(accelerator, state, args, tokenizer)
        if stop_early:
            accelerator.print(f"Early stopping at step {state.step}: {args.early_stopping} evaluations did not improve.")
            break
    progress.close()
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group evaluation needs
        tracker.finish()
    return state


def log_training(accelerator: Accelerator, state: TrainingState, scheduler, progress) -> None:
    """Log the mean loss of the steps since the last log (`state.recent_losses`, which it empties)."""
    losses, state.recent_losses = state.recent_losses, []
    loss = accelerator.reduce(torch.tensor(sum(losses) / len(losses), device=accelerator.device), "sum").item()
    entry = {"step": state.step, "loss": loss, "learning_rate": scheduler.get_last_lr()[0]}
    state.train_log.append(entry)
    accelerator.log({"train/loss": loss, "train/learning_rate": entry["learning_rate"]}, step=state.step)
    progress.set_postfix(loss=f"{loss:.3f}")


def log_evaluation(accelerator: Accelerator, state: TrainingState, metrics: dict, progress) -> None:
    state.eval_log.append({"step": state.step, **metrics})
    accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=state.step)
    progress.write(f"step {state.step}: eval loss {metrics['loss']:.3f}, perplexity {metrics['perplexity']:.1f}")


def save_training_summary(state: TrainingState, path: Path) -> None:
    path.write_text(json.dumps({"train_log": state.train_log, "eval_log": state.eval_log}, indent=2))
