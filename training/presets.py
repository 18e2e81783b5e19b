"""`--preset base|big`: the paper's recipe for WMT14 (Table 3, §5).

A preset sets the defaults of every option the paper fixes (`preset_defaults`, which the parser takes as its
defaults), so an option given on the command line wins over the preset. The batch is the paper's "approximately
25000 source tokens and 25000 target tokens" per step (§5.1): `--max-tokens` is chosen so that max_tokens x
accumulation x processes is about 25000, unless `--max-tokens` or `--batch-size` is given.

What the paper does not say is left to the options' defaults: gradient clipping is off (the paper mentions none)
and examples are truncated to 256 tokens (WMT14 sentences beyond that are rare; the paper reports no limit).
"""

import math

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


def per_process_max_tokens(tokens_per_step: int, accumulation: int, processes: int) -> int:
    """The `--max-tokens` that gives about `tokens_per_step` tokens per side in one optimiser step."""
    return math.ceil(tokens_per_step / (accumulation * processes))


def preset_defaults(
    preset: str, accumulation: int, processes: int, sentence_batches: bool = False, chooses_best: bool = False
) -> dict:
    """The option defaults of `preset`: Table 3's model and the paper's recipe. `accumulation` and `processes` size
    the token batch to the paper's tokens per step, unless the run asked for `sentence_batches` (--batch-size); a
    run that `chooses_best` (--keep-best, --early-stopping) ends with that model, not the average of the last."""
    defaults = {**PAPER_RECIPE, **PRESETS[preset]}
    if not sentence_batches:
        defaults["max_tokens"] = per_process_max_tokens(PAPER_TOKENS_PER_STEP, accumulation, processes)
    if chooses_best:
        defaults["average_last"] = 0
    return defaults
