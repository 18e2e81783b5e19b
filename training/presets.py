"""`--preset base|big`: the paper's recipe for WMT14 (Table 3, §5), and the checks of the recipe's options.

A preset sets every option the paper fixes; an option given on the command line wins over the preset (the parser
tells which were given, `explicit_options`). The batch is the paper's "approximately 25000 source tokens and 25000
target tokens" per step (§5.1): `--max-tokens` is chosen so that max_tokens x accumulation x processes is about
25000, unless `--max-tokens` is given.

What the paper does not say is left to the options' defaults: gradient clipping is off (the paper mentions none)
and examples are truncated to 256 tokens (WMT14 sentences beyond that are rare; the paper reports no limit).
"""

import argparse
import math

from accelerate import PartialState
from datasets import Dataset, DatasetDict, IterableDataset

PAPER_TOKENS_PER_STEP = 25_000  # per side: source and target (§5.1)
# Table 3 ("base" and "big"; N layers, d_model, d_ff, h, P_drop, eps_ls, train steps). Checkpoints every 10 minutes
# (§6.1) are about 1500 steps of base and 600 of big at the paper's step times (§5.2: 0.4 s and 1.0 s); the last 5
# (base) or 20 (big) are averaged.
PRESETS = {
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn_dim": 2048, "dropout": 0.1, "max_steps": 100_000,
             "save_steps": 1500, "eval_steps": 1500, "average_last": 5, "save_total_limit": 5},
    "big": {"d_model": 1024, "layers": 6, "heads": 16, "ffn_dim": 4096, "dropout": 0.3, "max_steps": 300_000,
            "save_steps": 600, "eval_steps": 600, "average_last": 20, "save_total_limit": 20},
}  # fmt: skip
PAPER_RECIPE = {
    "objective": "seq2seq",
    "vocab_size": 37_000,  # one shared source-target BPE vocabulary (§5.1)
    "learning_rate": 0.0,  # 0: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (§5.3)
    "warmup_steps": 4000,
    "lr_scheduler": "inverse_sqrt",
    "weight_decay": 0.0,
    "max_grad_norm": 0.0,
    "label_smoothing": 0.1,
    "pretrain_steps": 0,  # the paper trains from scratch
    "max_length": 256,
    "num_beams": 4,  # §6.1
    "length_penalty": 0.6,
}
METRICS_FOR_BEST = ("loss", "bleu")


def explicit_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options given in `argv`: argparse fills a default only where the namespace it is
    handed has no value yet, so a namespace pre-filled with a marker keeps the marker where nothing was given."""
    unset = object()
    destinations = {action.dest for action in parser._actions if action.dest != argparse.SUPPRESS}
    namespace = argparse.Namespace(**dict.fromkeys(destinations, unset))
    parsed, _ = parser.parse_known_args(argv, namespace=namespace)
    return {name for name, value in vars(parsed).items() if value is not unset}


def per_process_max_tokens(tokens_per_step: int, accumulation: int, processes: int) -> int:
    """The `--max-tokens` that gives about `tokens_per_step` tokens per side in one optimiser step."""
    return math.ceil(tokens_per_step / (accumulation * processes))


def apply_preset(args, explicit: set[str] = frozenset(), num_processes: int | None = None):
    """`args` with the preset's values wherever no option was given explicitly (`args` itself without a preset)."""
    if args.preset is None:
        return args
    values = {**PAPER_RECIPE, **PRESETS[args.preset]}
    if "max_tokens" not in explicit and "batch_size" not in explicit:
        accumulation = args.gradient_accumulation_steps
        processes = num_processes or PartialState().num_processes
        values["max_tokens"] = per_process_max_tokens(PAPER_TOKENS_PER_STEP, accumulation, processes)
    if {"keep_best", "early_stopping"} & explicit:
        values["average_last"] = 0  # the user chose the best checkpoint over the average of the last ones
    for name, value in values.items():
        if name not in explicit:
            setattr(args, name, value)
    args.__post_init__()  # the preset's values and the given ones must agree, as if all were given
    return args


def check_recipe_arguments(args) -> None:
    """Fail early, naming the option and the fix, for the options of token batching, presets, averaging, best-model
    selection (called by TrainArguments.__post_init__)."""
    from vaswani.training.arguments import InputError  # imported here: the arguments module imports this one first

    if args.preset is not None and args.preset not in PRESETS:
        raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}.")
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise InputError(f"--max-tokens must be positive, got {args.max_tokens}.")
    for name in ("average_last", "early_stopping", "eval_bleu_steps", "eval_bleu_examples"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be 0 (off) or more, got {getattr(args, name)}.")
    if args.average_last > args.save_total_limit:
        raise InputError(
            f"--average-last {args.average_last} needs that many checkpoints, but --save-total-limit keeps "
            f"{args.save_total_limit}: raise --save-total-limit to at least {args.average_last}."
        )
    written = args.max_steps // args.save_steps + (args.max_steps % args.save_steps > 0)  # and one at the end
    if args.average_last > written:
        raise InputError(
            f"--average-last {args.average_last} needs that many checkpoints, but --max-steps {args.max_steps} with "
            f"--save-steps {args.save_steps} writes {written}: save more often (--save-steps "
            f"{max(args.max_steps // args.average_last, 1)})."
        )
    if args.average_last and args.keep_best:
        raise InputError("--average-last and --keep-best each choose the final model; give one of them.")
    if args.metric_for_best not in METRICS_FOR_BEST:
        raise InputError(f"--metric-for-best must be loss or bleu, got {args.metric_for_best!r}.")
    if args.objective != "seq2seq" and (args.metric_for_best == "bleu" or args.eval_bleu_steps):
        raise InputError(
            "BLEU (--metric-for-best bleu, --eval-bleu-steps) is for translation: use --objective seq2seq."
        )
    if args.metric_for_best == "bleu" and (args.keep_best or args.early_stopping) and not args.eval_bleu_steps:
        args.eval_bleu_steps = args.eval_steps  # BLEU is then measured at every evaluation
    if args.eval_bleu_steps % args.eval_steps:
        raise InputError(
            f"--eval-bleu-steps {args.eval_bleu_steps} must be a multiple of --eval-steps {args.eval_steps}: BLEU is "
            f"added to an evaluation (e.g. --eval-bleu-steps {args.eval_steps * 2})."
        )
    if args.tokenizer_sample is not None and args.tokenizer_sample <= 0:
        raise InputError(f"--tokenizer-sample must be positive, got {args.tokenizer_sample}.")


def tokenizer_training_data(dataset, args):
    """The dataset the vocabulary is learned from: with --tokenizer-sample N, N training examples drawn by --seed (a
    BPE vocabulary of 37000 barely changes beyond a few hundred thousand sentences, and WMT14 has 4.5 million pairs).
    From a stream (--streaming), the first N examples: drawing at random would mean reading all of it."""
    if isinstance(dataset["train"], IterableDataset):
        if args.tokenizer_sample is None:
            return dataset  # --tokenizer, or weights that come with theirs: nothing is trained (arguments.py)
        return DatasetDict({**dataset, "train": Dataset.from_list(list(dataset["train"].take(args.tokenizer_sample)))})
    if args.tokenizer_sample is None or args.tokenizer_sample >= len(dataset["train"]):
        return dataset
    sample = dataset["train"].shuffle(seed=args.seed).select(range(args.tokenizer_sample))
    return DatasetDict({**dataset, "train": sample})
