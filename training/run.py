"""A whole training run (data, tokenizer, model, loop, evaluation, export), and the warm-start comparison built
from runs.

The main job (`vaswani-train` with no arguments) is one run: a shared English-Spanish vocabulary and a translation
model trained from scratch on the embedded Bible corpus. With `--pretrain-steps N` it measures instead whether warm
starting helps: it pretrains an encoder (masked LM on the source text) and a decoder (causal LM on the target
text), then trains one translation model from scratch and one from those stacks for the same number of steps,
and keeps the one with the lower validation loss as the final model.
"""

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import DistributedType, set_seed
from datasets import DatasetDict

from vaswani.configuration.errors import InputError
from vaswani.configuration.files import replacing_folder, write_atomically
from vaswani.training.arguments import SCHEDULES_WITHOUT_END, TrainArguments
from vaswani.training.batching import evaluation_loader, global_batch_description
from vaswani.training.build import build_model, build_tokenizer, tokenizer_for_data, tokenizer_to_save
from vaswani.training.checkpoints import TrainingState, check_not_mixed, resolve_resume, saved_run_definition
from vaswani.training.data import (
    build_collator, load_raw_dataset, load_streaming_dataset, process_stream, stream_encoders, tokenize_blocks,
    tokenize_pairs,
)  # fmt: skip
from vaswani.training.distributed import build_accelerator
from vaswani.training.evaluation import language_model_metrics, translation_metrics
from vaswani.training.export import save_for_hub
from vaswani.training.hub import push_trained_model
from vaswani.training.loop import save_training_summary, train
from vaswani.training.output_folder import FINAL_MODEL, LOSS_CURVES, TRAINING_LOG, WARM_START_SUMMARY
from vaswani.training.output_folder import locked_output_folder
from vaswani.training.plots import plot_loss_curves
from vaswani.training.selection import PRETRAINING_SELECTION, ModelSelection, final_weights, final_weights_description

logger = logging.getLogger(__name__)
LANGUAGE_NAMES = {"en": "English", "es": "Spanish"}


@dataclass
class RunResult:
    arguments: TrainArguments
    model_dir: Path
    metrics: dict
    examples: list[dict]
    state: TrainingState
    seconds: float


def run(args: TrainArguments) -> RunResult:
    """Train one model as `args` says, evaluate it on the test split (else validation) and export it."""
    with locked_output_folder(Path(args.output_dir)):
        return train_evaluate_export(args)


def train_evaluate_export(args: TrainArguments) -> RunResult:
    started = time.perf_counter()
    resume_from = resolve_resume(args.resume, args.output_dir)  # a bad --resume fails here, before any data is read
    check_not_mixed(args.output_dir, resume_from)
    if resume_from is not None:
        check_same_run(args, resume_from)
    accelerator = build_accelerator(
        args.mixed_precision, args.gradient_accumulation_steps, args.max_tokens is not None, args.output_dir
    )
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    raw = load_run_dataset(args)
    with accelerator.main_process_first():  # one process trains the tokenizer and fills the datasets cache
        tokenizer = build_tokenizer(args, raw, resume_from)
        tokenized = tokenize(raw, tokenizer_for_data(tokenizer, args.objective), args)
    model = build_model(args, tokenizer)
    collator = build_collator(args.objective, tokenizer_for_data(tokenizer, args.objective), model)
    selection = ModelSelection(args, tokenizer, raw["validation"])
    state = train(model, tokenized["train"], tokenized["validation"], collator, args, accelerator, tokenizer, selection)
    validation_loss = final_weights(model, tokenized["validation"], collator, state, args, accelerator)

    eval_split = "test" if "test" in raw else "validation"
    metrics, examples = final_metrics(
        model, tokenizer, raw[eval_split], tokenized[eval_split], collator, args, accelerator
    )
    metrics["validation_loss"] = validation_loss
    result = RunResult(args, output_dir / FINAL_MODEL, metrics, examples, state, time.perf_counter() - started)
    weights = sharded_weights(model, accelerator)
    if accelerator.is_main_process:
        saved_tokenizer = tokenizer_to_save(tokenizer, args.objective)
        export(accelerator.unwrap_model(model), saved_tokenizer, result, eval_split, weights)
        push_trained_model(result.model_dir, args.push_to_hub, result.metrics)
    accelerator.wait_for_everyone()
    return result


def check_same_run(args: TrainArguments, checkpoint: Path) -> None:
    """A resume continues the run it resumes, or is refused: every option that defines the run must be the same."""
    saved = saved_run_definition(checkpoint)
    if not saved:
        logger.warning(f"{checkpoint} does not record the options of its run (an older version saved it): the resume "
                       "cannot check that they are the same.")  # fmt: skip
    if differences := args.resume_differences(saved):
        ends = "" if args.lr_scheduler in SCHEDULES_WITHOUT_END else (
            f" (the {args.lr_scheduler} schedule decays to 0 at --max-steps, so --max-steps is part of the run; "
            f"with {' or '.join(SCHEDULES_WITHOUT_END)} it may change)"
        )  # fmt: skip
        raise InputError(
            f"--resume {checkpoint} continues a run with other options: {'; '.join(differences)}{ends}. Resume with "
            "the run's options, or start a new run in another --output-dir (--init-model takes exported weights)."
        )


def final_metrics(model, tokenizer, raw, tokenized, collator, args: TrainArguments, accelerator):
    """BLEU and chrF of the test translations (seq2seq), or the held-out loss and perplexity (mlm, clm)."""
    if args.objective != "seq2seq":
        loader = evaluation_loader(tokenized, collator, args.seed, accelerator.num_processes, args.batch_size,
                                   args.max_tokens)  # fmt: skip
        return language_model_metrics(model, accelerator.prepare(loader), accelerator, args.seed), []
    if args.max_eval_examples is not None:
        raw = raw.select(range(min(len(raw), args.max_eval_examples)))
    return translation_metrics(
        model, tokenizer, raw[args.source_column], raw[args.target_column], accelerator, args.num_beams,
        args.length_penalty, args.max_length, confidence=True,
    )  # fmt: skip


def load_run_dataset(args: TrainArguments):
    columns = args.text_columns()
    if args.streaming:
        return load_streaming_dataset(
            args.dataset, args.dataset_config, args.validation_examples, columns, args.strict_data
        )
    return load_raw_dataset(
        args.dataset, args.dataset_config, args.validation_fraction, args.seed, columns, args.strict_data
    )


def tokenize(raw, tokenizer, args: TrainArguments):
    columns = args.text_columns()
    if not args.streaming:
        return tokenize_in_memory(raw, tokenizer, columns, args.max_length)
    # The evaluation splits now; the training stream as training reads it, each process its own part.
    in_memory = DatasetDict({split: rows for split, rows in raw.items() if split != "train"})
    processes = PartialState()
    train = process_stream(
        raw["train"], raw.sharding, processes.process_index, processes.num_processes, args.seed, args.shuffle_buffer,
        columns, stream_encoders(tokenizer, columns, args.max_length),
    )  # fmt: skip
    return {**tokenize_in_memory(in_memory, tokenizer, columns, args.max_length), "train": train}


def tokenize_in_memory(raw: DatasetDict, tokenizer, columns: list[str], max_length: int) -> DatasetDict:
    """Pairs of a source and a target column (seq2seq), or the blocks of one text column (mlm, clm)."""
    if len(columns) == 2:
        return tokenize_pairs(raw, tokenizer, *columns, max_length)
    return tokenize_blocks(raw, tokenizer, *columns, max_length)


def sharded_weights(model, accelerator) -> dict | None:
    """The whole state dict of a model that FSDP or DeepSpeed shards over the processes, gathered (every process must
    call this; the main process gets the tensors), or None when each process holds the whole model already."""
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    weights = accelerator.get_state_dict(model)
    # Gathered, tied weights are separate copies that save_pretrained cannot recognise as one tensor: keep only the
    # source of each tie, as an unsharded save does, and loading ties them again.
    tied = accelerator.unwrap_model(model).all_tied_weights_keys
    return {name: tensor for name, tensor in weights.items() if name not in tied}


def export(model, tokenizer, result: RunResult, eval_split: str, weights: dict | None = None) -> None:
    args, output_dir = result.arguments, Path(result.arguments.output_dir)
    save_training_summary(result.state, output_dir / TRAINING_LOG)
    plot = plot_loss_curves({args.objective: result.state}, output_dir / LOSS_CURVES, f"{args.objective}: loss")
    card = describe(args, result, eval_split)
    with replacing_folder(result.model_dir) as folder:
        save_for_hub(model, tokenizer, folder, result.metrics, args, {**card, "plot": plot}, state_dict=weights)


def describe(args: TrainArguments, result: RunResult, eval_split: str) -> dict:
    """What the model card says about the data and the training of this run."""
    embedded = args.dataset in ("bible-en-es", "bible-en")
    languages = [args.source_column, args.target_column] if args.objective == "seq2seq" else None
    task = {"seq2seq": "translation", "mlm": "masked-language-model", "clm": "causal-language-model"}
    return {
        "model_name": f"vaswani-{args.dataset}-{args.objective}",
        "language": [code for code in languages if code in LANGUAGE_NAMES] if languages else None,
        "datasets": None if embedded else [args.dataset],
        "dataset_name": args.dataset,
        "eval_split": eval_split,
        "license": "apache-2.0",
        "description": (f"A {task[args.objective]} model trained with `vaswani-train` on "
                        f"{dataset_description(args.dataset)}."),
        "data": data_description(args.dataset),
        "training": training_description(args, result),
        "examples": result.examples,
    }


def dataset_description(dataset: str) -> str:
    if dataset == "bible-en-es":
        return ("the package's embedded corpus: English (World English Bible) to Spanish (Reina-Valera 1909) verse "
                "pairs, both public domain, split by whole books (test: Judges, Proverbs, Daniel, Nahum, Ephesians, "
                "Titus, II John)")  # fmt: skip
    if dataset == "bible-en":
        return "the package's embedded English corpus (World English Bible verses, public domain)"
    return f"`{dataset}`"


def data_description(dataset: str) -> str | None:
    if not dataset.startswith("bible-"):
        return None
    return (
        "The embedded corpus of the `vaswani` package: the World English Bible (English) and the Reina-Valera 1909 "
        "(Spanish), both in the public domain, extracted from Debian's packages of the texts. 30,863 verse pairs, "
        "split by whole books (train 28,330; validation 385: Ruth, Hosea, Philippians, III John; test 2,148: Judges, "
        "Proverbs, Daniel, Nahum, Ephesians, Titus, II John), and 35,306 English verses for pretraining, without "
        "the test books. The model weights are released under Apache-2.0."
    )


SCHEDULE_ENDS = {"linear": " (down to 0 at the last step)", "cosine": " (down to 0 at the last step)"}


def training_description(args: TrainArguments, result: RunResult) -> str:
    warm = f" Encoder from `{args.init_encoder}`, decoder from `{args.init_decoder}`." if args.init_encoder else ""
    return (
        f"{result.state.step} steps of {batch_description(args)}, Adam "
        f"(beta2 0.98, eps 1e-9), {args.lr_scheduler} schedule peaking at {args.peak_learning_rate():.2e} after "
        f"{args.warmup_steps} warm-up steps{SCHEDULE_ENDS.get(args.lr_scheduler, '')}, label smoothing "
        f"{args.label_smoothing}, dropout {args.dropout}; "
        f"{result.seconds / 60:.1f} minutes in all (training, evaluation, export).{warm}"
        f"{final_weights_description(args.average_last, args.keep_best, args.metric_for_best)}"
    )


def batch_description(args: TrainArguments) -> str:
    return global_batch_description(
        args.batch_size, args.max_tokens, args.gradient_accumulation_steps, PartialState().num_processes,
        args.objective == "seq2seq",
    )  # fmt: skip


def run_warm_start_comparison(args: TrainArguments) -> RunResult:
    """Translation from scratch and warm-started from pretrained stacks, same steps; the one with the lower
    validation loss is kept."""
    with locked_output_folder(Path(args.output_dir)):
        return compare_warm_start(args)


def compare_warm_start(args: TrainArguments) -> RunResult:
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    tokenizer_dir = output_dir / "tokenizer"
    if args.tokenizer is None:
        raw = load_run_dataset(args)
        build_tokenizer(args, raw).save_pretrained(tokenizer_dir)
    shared = {"tokenizer": args.tokenizer or str(tokenizer_dir), "pretrain_steps": 0, "push_to_hub": None}
    pretraining = {
        "max_steps": args.pretrain_steps,
        "label_smoothing": 0.0,
        "warmup_steps": min(args.warmup_steps, args.pretrain_steps),
        **PRETRAINING_SELECTION,
    }
    encoder = run(replace(
        args, objective="mlm", text_column=args.source_column, output_dir=str(output_dir / "encoder-mlm"),
        **shared, **pretraining,
    ))  # fmt: skip
    decoder = run(replace(
        args, objective="clm", text_column=args.target_column, output_dir=str(output_dir / "decoder-clm"),
        **shared, **pretraining,
    ))  # fmt: skip
    scratch = run(replace(args, output_dir=str(output_dir / "from-scratch"), **shared))
    warm = run(replace(
        args, output_dir=str(output_dir / "warm-started"), init_encoder=str(encoder.model_dir),
        init_decoder=str(decoder.model_dir), **shared,
    ))  # fmt: skip
    # Chosen on the validation split; the test scores are reported, never used to choose.
    best = min((warm, scratch), key=lambda result: result.metrics["validation_loss"])
    final = replace(best, model_dir=output_dir / FINAL_MODEL, seconds=time.perf_counter() - started)
    if PartialState().is_main_process:
        with replacing_folder(final.model_dir) as folder:
            shutil.copytree(best.model_dir, folder, dirs_exist_ok=True)
        summary = {
            "from-scratch": scratch.metrics, "warm-started": warm.metrics, "kept": best.arguments.output_dir,
            "minutes": {"total": final.seconds / 60, **{
                name: result.seconds / 60 for name, result in
                (("encoder-mlm", encoder), ("decoder-clm", decoder), ("from-scratch", scratch), ("warm-started", warm))
            }},
        }  # fmt: skip
        write_atomically(output_dir / WARM_START_SUMMARY, json.dumps(summary, indent=2))
        title = "Translation loss: from scratch vs warm-started"
        plot_loss_curves({"from scratch": scratch.state, "warm-started": warm.state}, output_dir / LOSS_CURVES, title)
        push_trained_model(final.model_dir, args.push_to_hub, best.metrics)
    PartialState().wait_for_everyone()
    return final
