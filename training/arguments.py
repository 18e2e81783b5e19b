"""Every option of `vaswani-train`, with its default and meaning; `parse_arguments` builds the command line.

The defaults are the main job: on the embedded Bible corpus, a shared English-Spanish BPE vocabulary and a small
Transformer trained on a laptop CPU in about a quarter of an hour. The optimiser and schedule are the paper's
(§5.3: Adam with beta2 0.98 and eps 1e-9, linear warm-up then inverse square root).
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

OBJECTIVES = ("seq2seq", "mlm", "clm")


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
        default=0.01, metadata={"help": "Held-out fraction when the dataset has no validation split."}
    )
    output_dir: str = field(default="outputs/vaswani-en-es", metadata={"help": "Checkpoints, logs, plot, final model."})

    # Tokenizer
    tokenizer: str | None = field(
        default=None, metadata={"help": "A saved tokenizer (folder or Hub name). Default: train one on the data."}
    )
    vocab_size: int = field(default=4000, metadata={"help": "Vocabulary size of the tokenizer trained here."})
    max_length: int = field(default=64, metadata={"help": "Tokens per example (mlm/clm: block size)."})

    # Model. The defaults are a small model that learns within the main job's 15 minutes on 2 CPU cores; the paper's
    # base model is d_model 512, 6 layers, 8 heads, d_ff 2048 (VaswaniConfig.base()).
    init_model: str | None = field(default=None, metadata={"help": "Start from this checkpoint (any view)."})
    init_encoder: str | None = field(default=None, metadata={"help": "seq2seq: encoder from this (mlm) checkpoint."})
    init_decoder: str | None = field(default=None, metadata={"help": "seq2seq: decoder from this (clm) checkpoint."})
    d_model: int = field(default=128, metadata={"help": "Model width."})
    layers: int = field(default=2, metadata={"help": "Layers in each stack."})
    heads: int = field(default=4, metadata={"help": "Attention heads."})
    ffn_dim: int = field(default=512, metadata={"help": "Feed-forward inner size (d_ff)."})
    dropout: float = field(default=0.1, metadata={"help": "Residual and embedding dropout (P_drop)."})
    label_smoothing: float | None = field(
        default=None, metadata={"help": "Default: 0.1 for seq2seq as in the paper, 0 for mlm and clm."}
    )

    pretrain_steps: int = field(
        default=500,
        metadata={
            "help": "seq2seq without --init-*: first pretrain an encoder (mlm on the source text) and a decoder (clm "
            "on the target text) for N steps each, then train from scratch and warm-started for --max-steps each "
            "and keep the one with the lower validation loss; 0 trains from scratch only."
        },
    )

    # Optimisation
    max_steps: int = field(default=2000, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=32, metadata={"help": "Examples per step on each process, before accumulation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(
        default=1e-3,
        metadata={
            "help": "Peak learning rate, reached at the end of warm-up. 0: the paper's d_model^-0.5 * warmup^-0.5 "
            "(§5.3), made for its 25000-token batches and too high for small ones."
        },
    )
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    lr_scheduler: str = field(
        default="inverse_sqrt",
        metadata={"help": "inverse_sqrt (the paper's), linear, cosine or constant_with_warmup."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (the paper uses none)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "no, fp16, bf16, or auto: bf16 where the GPU supports it, else no.",
            "choices": ("auto", "no", "fp16", "bf16"),
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, shuffling and dropout."})

    # Evaluation, checkpoints, logging
    eval_steps: int = field(default=500, metadata={"help": "Evaluate every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept (the newest)."})
    logging_steps: int = field(default=50, metadata={"help": "Log the training loss every N steps."})
    num_beams: int = field(default=4, metadata={"help": "Beam size for the test translations (the paper's: 4)."})
    length_penalty: float = field(default=0.6, metadata={"help": "Beam-search length penalty (the paper's: 0.6)."})
    max_eval_examples: int | None = field(default=None, metadata={"help": "Cap the examples translated for BLEU."})
    resume: str | None = field(
        default=None, metadata={"help": "Resume from this checkpoint folder, or 'latest' in --output-dir."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Push the final model to this Hub repo id."})

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        if self.dataset is None:
            self.dataset = "bible-en-es" if self.objective == "seq2seq" else "bible-en"
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if self.objective == "seq2seq" else 0.0
        if self.objective != "seq2seq" and (self.init_encoder or self.init_decoder):
            raise ValueError("--init-encoder and --init-decoder warm-start a seq2seq model; use --init-model.")
        if self.learning_rate < 0:
            raise ValueError(f"--learning-rate must be positive (or 0 for the paper's), got {self.learning_rate}.")
        if self.pretrain_steps < 0:
            raise ValueError(f"--pretrain-steps must be 0 or more, got {self.pretrain_steps}.")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps", "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}.")

    def compares_warm_start(self) -> bool:
        return self.objective == "seq2seq" and self.pretrain_steps > 0 and not (
            self.init_model or self.init_encoder or self.init_decoder
        )

    def peak_learning_rate(self) -> float:
        """The paper's lrate (§5.3) peaks at d_model^-0.5 * warmup_steps^-0.5, reached at the end of warm-up."""
        if self.learning_rate > 0:
            return self.learning_rate
        return self.d_model**-0.5 * max(self.warmup_steps, 1) ** -0.5


def parse_arguments(argv: list[str] | None = None) -> TrainArguments:
    """Parse the command line (`--max-steps 100` and `--max_steps 100` both work)."""
    parser = HfArgumentParser(TrainArguments, prog="vaswani-train", description="Train a Vaswani Transformer with Accelerate.")
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments
