"""One Accelerate training loop for every objective: accumulation, clipping, evaluation, checkpoints, resume.

The same code runs on a laptop CPU, under `torchrun`/`accelerate launch` with N processes (DDP), and under
FSDP or DeepSpeed through an Accelerate config file. What Accelerate does is left to it: device placement, DDP
wrapping, mixed precision, `accumulate`, trackers, `save_state`/`load_state` (model, optimiser, scheduler, RNG
states and our `TrainingState`), `skip_first_batches`.

Two things are ours, and each says why where it happens: the loss is weighted by token across the whole
accumulated, distributed batch (so N processes or N micro-batches equal one large batch), and checkpoints are
written to a temporary folder and renamed, so an interrupted run never leaves a broken latest checkpoint.
"""

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from vaswani.training.arguments import TrainArguments
from vaswani.training.data import EpochLengthGroupedSampler, example_lengths

CHECKPOINTS = "checkpoints"
LATEST = "latest"  # a file naming the newest complete checkpoint


@dataclass
class TrainingState:
    """Where the run is, saved with every checkpoint: the step, the data position, and the loss history."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed on each process
    train_log: list[dict] = field(default_factory=list)
    eval_log: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def build_accelerator(args: TrainArguments, log_with: str | None = "tensorboard") -> Accelerator:
    mixed_precision = args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(
        # Without an accelerator, say so: Accelerate then runs `torchrun` processes as a gloo (MULTI_CPU) group.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=mixed_precision,
        # We always feed whole accumulation windows, also across epoch ends: sync on the window, not the loader.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # Each process takes its share of one global batch, so that N processes step as one process would.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=log_with,
        project_dir=args.output_dir,
    )


def training_loader(dataset, collator, args: TrainArguments, accelerator: Accelerator) -> DataLoader:
    """Batches of similar lengths, `batch_size` examples per process, in an order fixed by (seed, epoch)."""
    global_batch = args.batch_size * accelerator.num_processes
    sampler = EpochLengthGroupedSampler(global_batch, example_lengths(dataset), args.seed)
    return DataLoader(
        dataset, batch_size=global_batch, sampler=sampler, collate_fn=collator, drop_last=True,
        generator=own_generator(args.seed),
    )  # fmt: skip


def evaluation_loader(dataset, collator, args: TrainArguments, accelerator: Accelerator) -> DataLoader:
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
    while True:
        loader.set_epoch(state.epoch)
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        for batch in batches:
            state.batches_in_epoch += 1
            yield batch
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


def save_checkpoint(accelerator: Accelerator, state: TrainingState, args: TrainArguments) -> Path:
    """`save_state` into a temporary folder, then an atomic rename and an atomic update of `latest`: a run killed
    at any moment leaves the previous checkpoint intact and named by `latest`."""
    root = checkpoint_root(args)
    final, temporary = root / f"step-{state.step:07d}", root / f"tmp-step-{state.step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        write_atomically(root / LATEST, final.name)
        prune_checkpoints(root, args.save_total_limit)
    accelerator.wait_for_everyone()
    return final


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
    if args.resume != LATEST:
        path = Path(args.resume)
        if not (path / "model.safetensors").exists() and not any(path.glob("*.safetensors")):
            raise FileNotFoundError(f"--resume {path} is not a checkpoint folder (no model weights inside).")
        return path
    latest = checkpoint_root(args) / LATEST
    return checkpoint_root(args) / latest.read_text().strip() if latest.exists() else None


def train(model, train_dataset, eval_dataset, collator, args: TrainArguments, accelerator: Accelerator) -> TrainingState:
    """Train `model` for `args.max_steps` optimiser steps; evaluates, logs and checkpoints along the way."""
    set_seed(args.seed)
    optimizer, scheduler = build_optimizer_and_scheduler(model, args)
    train_loader = training_loader(train_dataset, collator, args, accelerator)
    eval_loader = evaluation_loader(eval_dataset, collator, args, accelerator)
    model, optimizer, scheduler, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, scheduler, train_loader, eval_loader
    )
    state = TrainingState()
    accelerator.register_for_checkpointing(state)
    if (resume_from := resolve_resume(args)) is not None:
        accelerator.print(f"Resuming from {resume_from}")
        accelerator.load_state(str(resume_from))
    accelerator.init_trackers("tensorboard", config={k: v for k, v in asdict(args).items() if v is not None})

    model.train()
    batches = micro_batches_forever(train_loader, state, accelerator)
    progress = tqdm(
        total=args.max_steps, initial=state.step, desc=f"Training ({args.objective})",
        disable=not accelerator.is_local_main_process,
    )  # fmt: skip
    recent_losses = []
    while state.step < args.max_steps:
        step_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
        recent_losses.append(train_step(model, optimizer, scheduler, step_batches, args, accelerator))
        state.step += 1
        progress.update(1)
        if state.step % args.logging_steps == 0 or state.step == args.max_steps:
            log_training(accelerator, state, recent_losses, scheduler, progress)
            recent_losses = []
        if state.step % args.eval_steps == 0 or state.step == args.max_steps:
            log_evaluation(accelerator, state, evaluate_loss(model, eval_loader, accelerator), progress)
        if state.step % args.save_steps == 0 or state.step == args.max_steps:
            save_checkpoint(accelerator, state, args)
    progress.close()
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group evaluation needs
        tracker.finish()
    return state


def log_training(accelerator: Accelerator, state: TrainingState, losses: list[float], scheduler, progress) -> None:
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
