"""One Accelerate training loop for every objective: accumulation, clipping, the recipe's loss, evaluation,
checkpoints and resume.

The same code runs on a laptop CPU, under `torchrun`/`accelerate launch` with N processes (DDP), and under
FSDP or DeepSpeed through an Accelerate config file. What Accelerate does is left to it: device placement, DDP
wrapping, mixed precision, `accumulate`, trackers, `skip_first_batches`; the checkpoint folder is
`training/checkpoints.py`'s, the Accelerator's set-up `training/distributed.py`'s.

What is ours, and each says why where it happens: the loss is weighted by token across the whole accumulated,
distributed batch (so N processes or N micro-batches equal one large batch), and label smoothing (§5.4) is the
recipe's, applied here: the model's own `loss` stays plain cross-entropy, as every transformers model's is.
"""

import json
import math
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel, send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from vaswani.configuration.errors import InputError
from vaswani.configuration.files import write_atomically
from vaswani.modeling.modeling_vaswani import token_cross_entropy
from vaswani.training.arguments import TrainArguments
from vaswani.training.batching import StreamBatches, evaluation_loader, global_batch_description, training_loader
from vaswani.training.checkpoints import LATEST, TrainingState, checkpoint_root, latest_checkpoint, load_checkpoint
from vaswani.training.checkpoints import resolve_resume, save_checkpoint
from vaswani.training.data import stream_errors
from vaswani.training.distributed import prepare_for_fsdp2
from vaswani.training.output_folder import TENSORBOARD


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """The run ended before --max-steps, on purpose, with everything it trained safe: the message says where and how
    to go on, and `vaswani-train` exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingDiverged(RunStopped):
    """A non-finite loss or gradient: the run stopped before that update, so no weights it saves are non-finite."""


class TrainingInterrupted(RunStopped):
    """SIGTERM or SIGINT: the run saved a checkpoint at its last step and stopped."""


def build_optimizer_and_scheduler(
    model, peak_learning_rate: float, weight_decay: float, schedule: str, warmup_steps: int, max_steps: int
):
    """Adam with beta2 0.98 and eps 1e-9 (§5.3), and a schedule with linear warm-up to the peak learning rate."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=peak_learning_rate, betas=(0.9, 0.98), eps=1e-9, weight_decay=weight_decay
    )
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps)
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
        with stream_errors("The training stream (--dataset)"):
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


def recipe_loss(model, batch: dict, num_items_in_batch, label_smoothing: float) -> torch.Tensor:
    """The training loss: the model's own (plain cross-entropy over the labelled tokens of the whole step), or with
    label smoothing the smoothed cross-entropy of the model's logits, computed here: smoothing is a choice of the
    recipe, so an exported model's `loss` stays what every transformers model's is."""
    if not label_smoothing:
        return model(**batch, num_items_in_batch=num_items_in_batch).loss
    labels = batch["labels"]
    # The collator built the decoder inputs from the labels already (seq2seq); a causal LM's position i predicts
    # token i + 1, so its labels are shifted as the model's own loss shifts them.
    logits = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
    config = extract_model_from_parallel(model).config
    if config.is_decoder and not config.is_encoder_decoder:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return token_cross_entropy(logits, labels, label_smoothing, num_items_in_batch)


def train_step(
    model, optimizer, scheduler, batches: list[dict], accelerator, max_grad_norm: float, label_smoothing: float
) -> tuple[float, bool]:
    """One optimiser step over the micro-batches `batches` (one per accumulation step). Returns this process's share
    of the step's loss (the shares of all processes sum to the loss of the step), and whether the step was taken:
    with a non-finite loss or gradient on any process it is not, so the weights stay finite."""
    num_items_in_batch = labelled_tokens(batches, accelerator)
    step_loss = 0.0
    for batch in batches:
        with accelerator.accumulate(model):
            loss = recipe_loss(model, batch, num_items_in_batch, label_smoothing)
            # The loss is already a per-token mean over the global step; `backward` divides by the micro-batch
            # count and DDP averages over processes, so both are multiplied back (as in Accelerate's guide to
            # accumulation with variable-size samples).
            accelerator.backward(loss * len(batches) * accelerator.num_processes)
            step_loss += loss.item()
            if accelerator.sync_gradients:
                # The norm is measured even without clipping (an infinite bound scales by 1): it is the check.
                norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else math.inf)
                if not on_every_process(accelerator, finite_step(accelerator, step_loss, norm)):
                    optimizer.zero_grad()
                    return step_loss, False
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return step_loss, True


def finite_step(accelerator: Accelerator, loss: float, gradient_norm) -> bool:
    """Whether the step's loss and gradients are finite. Under fp16 a GradScaler skips an update whose gradients
    overflowed and lowers its scale (that is how it finds its scale), and DeepSpeed checks its own (no norm comes
    back): there only the loss is ours to check."""
    gradients_ours = gradient_norm is not None and accelerator.scaler is None
    return math.isfinite(loss) and (not gradients_ours or math.isfinite(float(gradient_norm)))


def on_every_process(accelerator: Accelerator, condition: bool) -> bool:
    """Whether `condition` holds on every process, so that all of them take the same branch."""
    if accelerator.num_processes == 1:
        return condition
    return accelerator.reduce(torch.tensor(float(not condition), device=accelerator.device), "sum").item() == 0


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


def train(
    model, train_dataset, eval_dataset, collator, args: TrainArguments, accelerator: Accelerator, tokenizer=None,
    selection=None,
) -> TrainingState:
    """Train `model` for `args.max_steps` optimiser steps; evaluates, logs and checkpoints (with `tokenizer`);
    `selection` (training/selection.py) adds validation BLEU, the best weights and early stopping. A non-finite
    loss raises TrainingDiverged before its update; SIGTERM or SIGINT, TrainingInterrupted after a checkpoint."""
    set_seed(args.seed)
    model, optimizer, scheduler, train_loader, eval_loader = prepared_for_training(
        model, train_dataset, eval_dataset, collator, args, accelerator
    )
    state = restored_state(accelerator, args.resume, args.output_dir)
    state.run_definition = args.run_definition()  # what a resume of this run must match (checkpoints carry it)
    model.train()
    batches = micro_batches_forever(train_loader, state, accelerator)
    with stop_requests() as caught, training_progress(args, state, accelerator) as progress:
        while state.step < args.max_steps:
            step_batches = [next(batches) for _ in range(args.gradient_accumulation_steps)]
            loss, taken = train_step(
                model, optimizer, scheduler, step_batches, accelerator, args.max_grad_norm, args.label_smoothing
            )
            if not taken:
                raise diverged(state.step + 1, scheduler.get_last_lr()[0], loss, args.output_dir)
            state.recent_losses.append(loss)
            state.step += 1
            progress.update(1)
            if after_step(model, eval_loader, state, scheduler, args, accelerator, tokenizer, selection, progress):
                break
            if not on_every_process(accelerator, not caught):
                raise interrupted(accelerator, state, args, tokenizer, caught)
    return state


def after_step(model, eval_loader, state, scheduler, args, accelerator, tokenizer, selection, progress) -> bool:
    """Log, evaluate, select and checkpoint as the step's number says; True when training should stop early."""
    if state.step % args.logging_steps == 0 or state.step == args.max_steps:
        log_training(accelerator, state, scheduler, progress)
    if state.step % args.eval_steps == 0 or state.step == args.max_steps:
        log_evaluation(accelerator, state, evaluate_loss(model, eval_loader, accelerator), progress)
    # Validation BLEU, best weights, early stopping (training/selection.py), before the checkpoint records them.
    stop_early = selection is not None and selection.after_step(model, state, accelerator)
    if is_save_step(state.step, args.save_steps, args.max_steps):
        save_checkpoint(accelerator, state, args.output_dir, args.save_total_limit, tokenizer, args.streaming)
    if stop_early:
        accelerator.print(f"Early stopping at step {state.step}: {args.early_stopping} evaluations did not improve.")
    return stop_early


def is_save_step(step: int, save_steps: int, max_steps: int) -> bool:
    return step % save_steps == 0 or step == max_steps


@contextmanager
def training_progress(args: TrainArguments, state: TrainingState, accelerator: Accelerator) -> Iterator[tqdm]:
    """TensorBoard and a progress bar for the block (the batch of a step printed first); both closed however it
    ends."""
    accelerator.init_trackers(TENSORBOARD, config={k: v for k, v in asdict(args).items() if v is not None})
    description = global_batch_description(
        args.batch_size, args.max_tokens, args.gradient_accumulation_steps, accelerator.num_processes,
        args.objective == "seq2seq",
    )  # fmt: skip
    accelerator.print(f"Batch per step: {description}")
    progress = tqdm(
        total=args.max_steps, initial=state.step, desc=f"Training ({args.objective})",
        disable=not accelerator.is_local_main_process,
    )  # fmt: skip
    try:
        yield progress
    finally:
        progress.close()
        for tracker in accelerator.trackers:  # not end_training(): that also ends the process group evaluation needs
            tracker.finish()


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """For the block, SIGTERM (what schedulers and preemptible machines send) and SIGINT (Ctrl-C) ask the run to stop
    after its current step: the list holds the signal caught. A second signal stops the process at once."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only the main thread may handle signals
        yield caught
        return

    def request_stop(number: int, frame) -> None:
        caught.append(number)
        for other in STOP_SIGNALS:
            signal.signal(other, signal.SIG_DFL)

    previous = {number: signal.signal(number, request_stop) for number in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def interrupted(accelerator, state: TrainingState, args: TrainArguments, tokenizer, caught: list[int]):
    """Save the current step (unless it was just saved) and say how to go on."""
    if not is_save_step(state.step, args.save_steps, args.max_steps):
        save_checkpoint(accelerator, state, args.output_dir, args.save_total_limit, tokenizer, args.streaming)
    number = caught[0] if caught else signal.SIGTERM  # another process may have caught it
    name = signal.Signals(number).name
    folder = checkpoint_root(args.output_dir) / f"step-{state.step:07d}"
    return TrainingInterrupted(
        f"stopped by {name} at step {state.step} of {args.max_steps}: checkpoint saved to {folder}. Resume with the "
        f"same options and --resume latest.", 128 + number,
    )  # fmt: skip


def diverged(step: int, learning_rate: float, loss: float, output_dir: str | Path) -> TrainingDiverged:
    try:
        last_good = latest_checkpoint(checkpoint_root(output_dir)) or "none yet"
    except InputError:
        last_good = "none readable"
    return TrainingDiverged(
        f"the loss or its gradient is not finite at step {step} (loss {loss}, learning rate {learning_rate:.2e}): the "
        f"run stopped before that update, so no checkpoint, best model or export holds non-finite weights. The last "
        f"good checkpoint: {last_good}. Train again with a lower --learning-rate (or more --warmup-steps, or "
        "--max-grad-norm clipping).", 1,
    )  # fmt: skip


def prepared_for_training(model, train_dataset, eval_dataset, collator, args: TrainArguments, accelerator: Accelerator):
    """The model, optimiser, schedule and loaders, prepared by Accelerate (wrapped, placed, sharded)."""
    if accelerator.is_fsdp2:
        prepare_for_fsdp2(model, accelerator)
    optimizer, scheduler = build_optimizer_and_scheduler(
        model, args.peak_learning_rate(), args.weight_decay, args.lr_scheduler, args.warmup_steps, args.max_steps
    )
    sizes = {"batch_size": args.batch_size, "max_tokens": args.max_tokens}
    processes = accelerator.num_processes
    train_loader = training_loader(
        train_dataset, collator, args.seed, processes, **sizes, shuffle_buffer=args.shuffle_buffer
    )
    eval_loader = evaluation_loader(eval_dataset, collator, args.seed, processes, **sizes)
    if args.streaming:  # each process's loader reads its own stream: Accelerate would shard it again
        model, optimizer, scheduler, eval_loader = accelerator.prepare(model, optimizer, scheduler, eval_loader)
    else:
        model, optimizer, scheduler, train_loader, eval_loader = accelerator.prepare(
            model, optimizer, scheduler, train_loader, eval_loader
        )
    # Token-count batches are dealt out whole (split_batches=False), and Accelerate then steps the schedule once per
    # process at each step, as for a per-process schedule; ours counts optimiser steps however many processes.
    scheduler.split_batches = True
    return model, optimizer, scheduler, train_loader, eval_loader


def restored_state(accelerator: Accelerator, resume: str | None, output_dir: str | Path) -> TrainingState:
    """A new training state, or the one of the checkpoint --resume names (loading its weights, optimiser, schedule
    and random states into what `accelerator` prepared)."""
    state = TrainingState()
    if (resume_from := resolve_resume(resume, output_dir)) is not None:
        accelerator.print(f"Resuming from {resume_from}")
        load_checkpoint(accelerator, resume_from, state)
    elif resume == LATEST:
        root = checkpoint_root(output_dir)
        accelerator.print(f"--resume latest: {root} holds no checkpoint yet; training starts from step 0.")
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
    write_atomically(path, json.dumps({"train_log": state.train_log, "eval_log": state.eval_log}, indent=2))
