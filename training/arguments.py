"""Every option of `vaswani-train`, with its default and meaning; `parse_arguments` builds the command line.

The defaults are the main job: on the embedded Bible corpus, a shared English-Spanish BPE vocabulary and a small
Transformer trained from scratch on 2 CPU cores in under a quarter of an hour. The optimiser is the paper's (§5.3:
Adam with beta2 0.98 and eps 1e-9, linear warm-up); the rest of the recipe is what buys the most test BLEU per
CPU-minute at that budget, measured by `benchmarks/main_job_study.py` (its table is in the README): token batches,
a higher peak learning rate decayed linearly to 0 instead of the paper's inverse square root, no dropout, and
examples up to 128 tokens.
"""

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, SchedulerType

from vaswani.configuration.errors import InputError
from vaswani.training.output_folder import check_output_folder
from vaswani.training.presets import PRESETS, preset_defaults

OBJECTIVES = ("seq2seq", "mlm", "clm")
SCHEDULERS = ("inverse_sqrt", "linear", "cosine", "constant_with_warmup")
DEFAULT_MAX_TOKENS = 2048  # per side: about 55 verse pairs, the main job's batch
HUB_REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # `name` or `owner/name`; anything else can only be a local path
METRICS_FOR_BEST = ("loss", "bleu")
# What a resume may change: where and how often the run writes and evaluates, and which final weights it keeps. Every
# other option defines the run (the data, the tokenizer, the model, the optimiser and schedule, the batches, the
# seed), and a resume that gives another value is refused with both named: it would not continue the same run.
MAY_CHANGE_ON_RESUME = frozenset({
    "output_dir", "resume", "push_to_hub", "eval_steps", "save_steps", "save_total_limit", "logging_steps",
    "num_beams", "length_penalty", "max_eval_examples", "eval_bleu_steps", "eval_bleu_examples", "keep_best",
    "average_last", "early_stopping", "metric_for_best", "tokenizer_sample", "pretrain_steps", "max_steps",
})  # fmt: skip
# Schedules whose learning rate at a step does not depend on --max-steps, which a resume may then extend or shorten;
# the others (linear, cosine) decay to 0 at --max-steps, and a new value would move the rate of the steps left.
SCHEDULES_WITHOUT_END = ("inverse_sqrt", "constant_with_warmup")


@dataclass
class TrainArguments:
    """The options of one training run (`--help` prints these descriptions)."""

    # What to train and on what
    objective: str = field(
        default="seq2seq", metadata={"help": "seq2seq (translation), mlm or clm.", "choices": OBJECTIVES}
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "'bible-en-es' (embedded pairs), 'bible-en' (embedded English), a Hub dataset name, or local "
            "text/json/jsonl/csv/parquet files or a folder of them. Default: bible-en-es for seq2seq, bible-en "
            "for mlm and clm."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    source_column: str = field(default="en", metadata={"help": "seq2seq: the column to translate from."})
    target_column: str = field(default="es", metadata={"help": "seq2seq: the column to translate into."})
    text_column: str = field(default="text", metadata={"help": "mlm/clm: the column of text."})
    validation_fraction: float = field(
        default=0.01,
        metadata={"help": "Held-out fraction when the dataset has no validation split (--streaming: see "
                  "--validation-examples)."},
    )  # fmt: skip
    strict_data: bool = field(
        default=False,
        metadata={"help": "Stop at the first row whose text is missing, null or blank, instead of skipping such rows."},
    )
    output_dir: str = field(default="outputs/vaswani-en-es", metadata={"help": "Checkpoints, logs, plot, final model."})

    # Tokenizer
    tokenizer: str | None = field(
        default=None, metadata={"help": "A saved tokenizer (folder or Hub name). Default: train one on the data."}
    )
    vocab_size: int = field(default=4000, metadata={"help": "Vocabulary size of the tokenizer trained here."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example (mlm/clm: block size)."})

    # Model. The defaults are a small model that learns within the main job's 15 minutes on 2 CPU cores; the paper's
    # base model is d_model 512, 6 layers, 8 heads, d_ff 2048 (VaswaniConfig.base()).
    init_model: str | None = field(default=None, metadata={"help": "Start from this checkpoint (any view)."})
    init_encoder: str | None = field(default=None, metadata={"help": "seq2seq: encoder from this (mlm) checkpoint."})
    init_decoder: str | None = field(default=None, metadata={"help": "seq2seq: decoder from this (clm) checkpoint."})
    d_model: int = field(default=128, metadata={"help": "Model width."})
    layers: int = field(default=2, metadata={"help": "Layers in each stack."})
    heads: int = field(default=4, metadata={"help": "Attention heads."})
    ffn_dim: int = field(default=512, metadata={"help": "Feed-forward inner size (d_ff)."})
    dropout: float = field(
        default=0.0, metadata={"help": "Residual and embedding dropout (P_drop; the paper's 0.1 is --preset base's)."}
    )
    label_smoothing: float | None = field(
        default=None, metadata={"help": "Default: 0.1 for seq2seq as in the paper, 0 for mlm and clm."}
    )

    pretrain_steps: int = field(
        default=0,
        metadata={
            "help": "seq2seq without --init-*: the warm-start comparison. First pretrain an encoder (mlm on the source "
            "text) and a decoder (clm on the target text) for N steps each, then train from scratch and warm-started "
            "for --max-steps each and keep the one with the lower validation loss. 0: train from scratch only."
        },
    )

    # Optimisation
    max_steps: int = field(default=2700, metadata={"help": "Optimiser steps."})
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sentence batches: N examples per step on each process, before accumulation, instead of the "
            "token batches of --max-tokens."
        },
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(
        default=4e-3,
        metadata={
            "help": "Peak learning rate, reached at the end of warm-up. 0: the paper's d_model^-0.5 * warmup^-0.5 "
            "(§5.3), made for its 25000-token batches and too high for small ones."
        },
    )
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    lr_scheduler: str = field(
        default="linear",
        metadata={
            "help": "After warm-up: linear (decay to 0 at --max-steps), inverse_sqrt (the paper's), cosine or "
            "constant_with_warmup.",
            "choices": SCHEDULERS,
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (the paper uses none)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "no, fp16, bf16, or auto: bf16 where the GPU supports it, else no. fp16 needs a GPU; bf16 on a "
            "CPU runs under CPU autocast.",
            "choices": ("auto", "no", "fp16", "bf16"),
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and dropout."})

    # Evaluation, checkpoints, logging
    eval_steps: int = field(default=200, metadata={"help": "Evaluate every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (the newest)."})
    logging_steps: int = field(default=50, metadata={"help": "Log the training loss every N steps."})
    num_beams: int = field(default=4, metadata={"help": "Beam size for the test translations (the paper's: 4)."})
    length_penalty: float = field(default=0.6, metadata={"help": "Beam-search length penalty (the paper's: 0.6)."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Cap the examples translated for BLEU."})
    resume: str | None = field(
        default=None,
        metadata={
            "help": "Resume from this checkpoint folder, or from the latest in --output-dir ('latest': from scratch, "
            "or from --init-*, while there is none)."
        },
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Push the final model to this Hub repo id."})

    # The paper's recipe at scale (training/presets.py, batching.py, averaging.py)
    preset: str | None = field(
        default=None,
        metadata={
            "help": "base or big: the paper's WMT14 recipe (Table 3 model, shared 37000-token vocabulary, warm-up "
            "4000 with the paper's learning rate, label smoothing 0.1, ~25000 source + 25000 target tokens per step, "
            "checkpoints averaged at the end). Options given explicitly override the preset.",
            "choices": ("base", "big"),
        },
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Token-count batching: each batch holds examples of similar length, at most N padded tokens per "
            f"side (source and target) on each process, before accumulation. Default: {DEFAULT_MAX_TOKENS} unless "
            "--batch-size is given."
        },
    )
    average_last: int = field(
        default=0, metadata={"help": "Final model: the parameter mean of the last N checkpoints (§6.1); 0: off."}
    )
    keep_best: bool = field(
        default=False,
        metadata={"help": "Final model: the checkpoint with the best --metric-for-best (never pruned), not the last."},
    )
    metric_for_best: str = field(
        default="loss",
        metadata={
            "help": "loss (validation loss) or bleu (BLEU of validation translations, measured every --eval-steps "
            "unless --eval-bleu-steps says otherwise), for --keep-best and --early-stopping.",
            "choices": ("loss", "bleu"),
        },
    )
    early_stopping: int = field(
        default=0, metadata={"help": "Stop after N evaluations without improving --metric-for-best; 0: off."}
    )
    eval_bleu_steps: int = field(
        default=0,
        metadata={"help": "seq2seq: BLEU of validation translations every N steps (beam and length penalty as for "
                  "testing; 0: off)."},
    )  # fmt: skip
    eval_bleu_examples: int = field(
        default=200, metadata={"help": "Validation sentences translated for --eval-bleu-steps (keeps it cheap)."}
    )
    tokenizer_sample: int | None = field(
        default=None,
        metadata={"help": "Train the tokenizer on N random training examples instead of all (--streaming: the first "
                  "N of the stream)."},
    )  # fmt: skip

    # Large data (training/data.py: streaming)
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training data as a stream (datasets' IterableDataset): nothing is copied to disk or "
            "held in memory, examples are tokenized as training reads them, each process reads its own shard. "
            "Needs --tokenizer or --tokenizer-sample."
        },
    )
    validation_examples: int = field(
        default=1000,
        metadata={"help": "--streaming, for a dataset without a validation split: hold out its first N examples."},
    )
    shuffle_buffer: int = field(
        default=10_000,
        metadata={"help": "--streaming: examples shuffled in a buffer, and grouped by length into batches."},
    )

    def __post_init__(self):
        """Every option is checked here, and only here, before any work: a bad one fails in a second, not after
        training. The defaults that depend on other options are resolved first."""
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        if self.batch_size is not None and self.max_tokens is not None:
            raise InputError("--batch-size and --max-tokens are two ways to size a batch: give one of them.")
        self.resolve_defaults()
        self.check_numbers()
        self.check_combinations()
        self.check_paths()
        self.check_recipe()

    def resolve_defaults(self) -> None:
        if self.dataset is None:
            self.dataset = "bible-en-es" if self.objective == "seq2seq" else "bible-en"
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if self.objective == "seq2seq" else 0.0
        if self.batch_size is None and self.max_tokens is None:
            self.max_tokens = DEFAULT_MAX_TOKENS
        if self.metric_for_best == "bleu" and (self.keep_best or self.early_stopping) and not self.eval_bleu_steps:
            self.eval_bleu_steps = self.eval_steps  # BLEU is then measured at every evaluation

    def check_numbers(self) -> None:
        positive = ("max_steps", "gradient_accumulation_steps", "eval_steps", "save_steps", "max_length",
                    "logging_steps", "num_beams", "vocab_size", "d_model", "layers", "heads", "ffn_dim")  # fmt: skip
        for name in positive + (("batch_size",) if self.batch_size is not None else ()):
            if getattr(self, name) <= 0:
                raise InputError(f"{flag(name)} must be positive, got {getattr(self, name)}.")
        for name in ("pretrain_steps", "warmup_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise InputError(f"{flag(name)} must be 0 or more, got {getattr(self, name)}.")
        if self.learning_rate < 0:
            raise InputError(f"--learning-rate must be positive (or 0 for the paper's), got {self.learning_rate}.")
        if self.max_grad_norm < 0:
            raise InputError(f"--max-grad-norm must be positive, or 0 to disable clipping; got {self.max_grad_norm}.")
        if self.save_total_limit < 1:
            raise InputError(f"--save-total-limit must be 1 or more (a resume needs one), got {self.save_total_limit}.")
        if self.max_eval_examples is not None and self.max_eval_examples < 1:
            raise InputError(f"--max-eval-examples must be 1 or more (omit it for all), got {self.max_eval_examples}.")
        for name in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise InputError(f"{flag(name)} is a probability in [0, 1), got {getattr(self, name)}.")
        if not 0 < self.validation_fraction < 1:
            raise InputError(f"--validation-fraction must be between 0 and 1, got {self.validation_fraction}.")
        if self.d_model % self.heads:
            raise InputError(f"--d-model ({self.d_model}) must be a multiple of --heads ({self.heads}).")

    def check_combinations(self) -> None:
        if self.objective != "seq2seq" and (self.init_encoder or self.init_decoder):
            raise InputError("--init-encoder and --init-decoder warm-start a seq2seq model; use --init-model.")
        if self.lr_scheduler not in SCHEDULERS or self.lr_scheduler not in {kind.value for kind in SchedulerType}:
            raise InputError(f"--lr-scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}.")
        # Refused rather than run in fp32: Accelerate would silently train without fp16 on a CPU.
        if self.mixed_precision == "fp16" and not torch.accelerator.is_available():
            raise InputError(
                "--mixed-precision fp16 needs a GPU and this machine has none: use --mixed-precision bf16 (CPU "
                "autocast) or no."
            )
        if self.streaming:
            self.check_streaming()
        if self.resume not in (None, "latest") and self.compares_warm_start():
            raise InputError(
                "--resume FOLDER names one run's checkpoint, but the warm-start comparison (--pretrain-steps > 0) "
                "makes four runs: use --resume latest, which resumes each of them, or --pretrain-steps 0."
            )

    def check_streaming(self) -> None:
        for name in ("validation_examples", "shuffle_buffer"):
            if getattr(self, name) <= 0:
                raise InputError(f"{flag(name)} must be positive, got {getattr(self, name)}.")
        if self.compares_warm_start():
            raise InputError(
                "--streaming trains one model: the comparison of warm-started and from-scratch models "
                "(--pretrain-steps > 0) reads the data five times; use --pretrain-steps 0."
            )
        if self.tokenizer is None and self.tokenizer_sample is None and not (self.init_model or self.init_encoder):
            raise InputError(
                "--streaming reads the data as training goes, so there is nothing to train a tokenizer on first: give "
                "a saved --tokenizer, or --tokenizer-sample N to train one on the first N examples of the stream."
            )

    def check_paths(self) -> None:
        check_output_folder(Path(self.output_dir))  # also checked again when the run takes the folder's lock
        for name, required in (("tokenizer", "tokenizer.json"), ("init_model", "config.json"),
                               ("init_encoder", "config.json"), ("init_decoder", "config.json")):  # fmt: skip
            check_local_or_hub(flag(name), getattr(self, name), required)

    def check_recipe(self) -> None:
        """The options of token batching, presets, averaging and best-model selection."""
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}.")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise InputError(f"--max-tokens must be positive, got {self.max_tokens}.")
        for name in ("average_last", "early_stopping", "eval_bleu_steps", "eval_bleu_examples"):
            if getattr(self, name) < 0:
                raise InputError(f"{flag(name)} must be 0 (off) or more, got {getattr(self, name)}.")
        if self.tokenizer_sample is not None and self.tokenizer_sample <= 0:
            raise InputError(f"--tokenizer-sample must be positive, got {self.tokenizer_sample}.")
        if self.average_last > self.save_total_limit:
            raise InputError(
                f"--average-last {self.average_last} needs that many checkpoints, but --save-total-limit keeps "
                f"{self.save_total_limit}: raise --save-total-limit to at least {self.average_last}."
            )
        written = self.max_steps // self.save_steps + (self.max_steps % self.save_steps > 0)  # and one at the end
        if self.average_last > written:
            raise InputError(
                f"--average-last {self.average_last} needs that many checkpoints, but --max-steps {self.max_steps} "
                f"with --save-steps {self.save_steps} writes {written}: save more often (--save-steps "
                f"{max(self.max_steps // self.average_last, 1)})."
            )
        self.check_selection()

    def check_selection(self) -> None:
        if self.average_last and self.keep_best:
            raise InputError("--average-last and --keep-best each choose the final model; give one of them.")
        if self.metric_for_best not in METRICS_FOR_BEST:
            raise InputError(f"--metric-for-best must be loss or bleu, got {self.metric_for_best!r}.")
        if self.objective != "seq2seq" and (self.metric_for_best == "bleu" or self.eval_bleu_steps):
            raise InputError(
                "BLEU (--metric-for-best bleu, --eval-bleu-steps) is for translation: use --objective seq2seq."
            )
        if self.eval_bleu_steps % self.eval_steps:
            raise InputError(
                f"--eval-bleu-steps {self.eval_bleu_steps} must be a multiple of --eval-steps {self.eval_steps}: "
                f"BLEU is added to an evaluation (e.g. --eval-bleu-steps {self.eval_steps * 2})."
            )

    def text_columns(self) -> list[str]:
        """The columns of text the run reads: source and target for seq2seq, the text for mlm and clm."""
        return [self.source_column, self.target_column] if self.objective == "seq2seq" else [self.text_column]

    def run_definition(self) -> dict:
        """The options that define this run (JSON values, local paths made absolute), which checkpoints carry."""
        defining = {name: value for name, value in asdict(self).items() if name not in MAY_CHANGE_ON_RESUME}
        if self.lr_scheduler not in SCHEDULES_WITHOUT_END:
            defining["max_steps"] = self.max_steps
        for name in ("dataset", "tokenizer", "init_model", "init_encoder", "init_decoder"):
            if defining[name] is not None and Path(defining[name]).exists():
                defining[name] = str(Path(defining[name]).resolve())
        return defining

    def resume_differences(self, saved: dict) -> list[str]:
        """Each defining option whose value differs from the one the resumed checkpoint was trained with."""
        current = self.run_definition()
        return [
            f"{flag(name)}: {saved[name]!r} in the checkpoint, {current[name]!r} now"
            for name in sorted(saved.keys() & current.keys()) if saved[name] != current[name]
        ]  # fmt: skip

    def compares_warm_start(self) -> bool:
        return self.objective == "seq2seq" and self.pretrain_steps > 0 and not (
            self.init_model or self.init_encoder or self.init_decoder
        )

    def peak_learning_rate(self) -> float:
        """The paper's lrate (§5.3) peaks at d_model^-0.5 * warmup_steps^-0.5, reached at the end of warm-up."""
        if self.learning_rate > 0:
            return self.learning_rate
        return self.d_model**-0.5 * max(self.warmup_steps, 1) ** -0.5


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_local_or_hub(option: str, value: str | None, required_file: str) -> None:
    """A folder that exists must hold `required_file`; a name that is no folder must at least look like a Hub repo
    id (else the Hub client's "Repo id must be in the form..." would hide that a local folder is missing)."""
    if value is None:
        return
    path = Path(value)
    if path.is_dir() and not (path / required_file).is_file():
        kind = "tokenizer" if required_file == "tokenizer.json" else "model"
        raise InputError(f"{option} {value} has no {required_file}, so it is not a saved {kind} folder.")
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {value} is a file; give the folder it was saved to.")
    if not path.exists() and (path.is_absolute() or value.startswith((".", "~")) or not HUB_REPO_ID.fullmatch(value)):
        raise InputError(f"{option} {value}: no such folder (and not a Hub repo id of the form owner/name).")


def parse_arguments(argv: list[str] | None = None) -> TrainArguments:
    """Parse the command line (`--max-steps 100` and `--max_steps 100` both work). With --preset, the preset's
    values are the parser's defaults, so that every option given explicitly wins over them."""
    description = "Train a Vaswani Transformer with Accelerate."
    parser = HfArgumentParser(TrainArguments, prog="vaswani-train", description=description)
    given, _ = parser.parse_known_args(argv)
    if given.preset in PRESETS:
        processes = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun and accelerate launch for each process
        parser.set_defaults(**preset_defaults(
            given.preset, given.gradient_accumulation_steps, processes, sentence_batches=given.batch_size is not None,
            chooses_best=bool(given.keep_best or given.early_stopping),
        ))  # fmt: skip
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments
