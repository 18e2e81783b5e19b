"""Which weights a run ends with: validation BLEU during training, the best model, early stopping, averaging.

`ModelSelection.after_step` runs after each optimiser step's evaluation: it adds the BLEU of validation translations
to the step's evaluation entry every `--eval-bleu-steps` (the paper's beam 4 and length penalty 0.6, on at most
`--eval-bleu-examples` sentences), saves the weights of the best evaluation so far (`--keep-best`) to
`OUTPUT_DIR/best`, outside the checkpoints so that pruning never touches them, and says when to stop
(`--early-stopping N`: N evaluations in a row without improvement). Everything it decides from is in the
evaluation log, which checkpoints carry, so a resumed run decides as the uninterrupted one would.

`final_weights` then loads the final model's weights: the mean of the last checkpoints (`--average-last`) or the
best ones (`--keep-best`), and measures their validation loss, which is what runs are compared by.
"""

import json
from pathlib import Path

from vaswani.configuration.files import replace_folder, temporary_name, temporary_sibling
from vaswani.training.averaging import last_checkpoints, load_average
from vaswani.training.batching import evaluation_loader
from vaswani.training.evaluation import translation_metrics
from vaswani.training.loop import evaluate_loss
from vaswani.training.output_folder import BEST

# The warm-start comparison's pretraining runs (mlm, clm) end with their last weights: BLEU, best-model and
# averaging options are for the translation runs.
PRETRAINING_SELECTION = {
    "average_last": 0, "keep_best": False, "early_stopping": 0, "eval_bleu_steps": 0, "metric_for_best": "loss"
}


def improves(metric: str, value: float, best: float | None) -> bool:
    return best is None or (value > best if metric == "bleu" else value < best)


def evaluations_of(eval_log: list[dict], metric: str) -> list[dict]:
    return [entry for entry in eval_log if metric in entry]


def best_entry(eval_log: list[dict], metric: str) -> dict | None:
    best = None
    for entry in evaluations_of(eval_log, metric):
        if improves(metric, entry[metric], None if best is None else best[metric]):
            best = entry
    return best


def evaluations_without_improvement(eval_log: list[dict], metric: str) -> int:
    """How many evaluations in a row, up to the last, did not improve on the best before them."""
    count, best = 0, None
    for entry in evaluations_of(eval_log, metric):
        count, best = (0, entry[metric]) if improves(metric, entry[metric], best) else (count + 1, best)
    return count


class ModelSelection:
    """Validation BLEU, the best weights and early stopping, for the loop to call after each step."""

    def __init__(self, args, tokenizer, validation_pairs):
        self.args, self.tokenizer = args, tokenizer
        self.validation_pairs = validation_pairs  # raw text pairs: BLEU is computed on detokenized output
        self.metric = args.metric_for_best

    def after_step(self, model, state, accelerator) -> bool:
        """Call after the step's evaluation, if any; returns True when training should stop early."""
        entry = state.eval_log[-1] if state.eval_log and state.eval_log[-1]["step"] == state.step else None
        if entry is None:
            return False
        bleu_steps = self.args.eval_bleu_steps
        if bleu_steps and (state.step % bleu_steps == 0 or state.step == self.args.max_steps):
            entry.update(self.validation_bleu(model, accelerator))
            accelerator.print(f"step {state.step}: validation BLEU {entry['bleu']:.2f}")
        if self.metric not in entry:
            return False
        if self.args.keep_best and best_entry(state.eval_log, self.metric) is entry:
            self.save_best(model, entry, accelerator)
        return bool(self.args.early_stopping) and (
            evaluations_without_improvement(state.eval_log, self.metric) >= self.args.early_stopping
        )

    def validation_bleu(self, model, accelerator) -> dict:
        args = self.args
        pairs = self.validation_pairs.select(range(min(len(self.validation_pairs), args.eval_bleu_examples)))
        metrics, _ = translation_metrics(
            model, self.tokenizer, pairs[args.source_column], pairs[args.target_column], accelerator,
            args.num_beams, args.length_penalty, args.max_length,
        )  # fmt: skip
        model.train()  # translation_metrics leaves the model in eval mode
        return {"bleu": metrics["bleu"], "chrf": metrics["chrf"]}

    def save_best(self, model, entry: dict, accelerator) -> None:
        """Weights and best.json into a temporary folder, then renamed: a run killed while writing never leaves
        half-written best weights."""
        folder = Path(self.args.output_dir) / BEST
        temporary = temporary_name(folder)
        if accelerator.is_main_process:
            temporary = temporary_sibling(folder)
        accelerator.wait_for_everyone()
        accelerator.save_model(model, temporary)  # gathers sharded weights; safetensors, tied weights stored once
        if accelerator.is_main_process:
            (temporary / "best.json").write_text(json.dumps({"metric": self.metric, **entry}, indent=1))
            replace_folder(temporary, folder)
        accelerator.wait_for_everyone()


def final_weights(model, eval_dataset, collator, state, args, accelerator) -> float:
    """Load the final model's weights into `model` (the mean of the last `--average-last` checkpoints, or the best
    of `--keep-best`; else it keeps the last) and return its validation loss."""
    if args.average_last:
        folders = last_checkpoints(args.output_dir, args.average_last)
    elif args.keep_best and (Path(args.output_dir) / BEST / "best.json").is_file():
        folders = [Path(args.output_dir) / BEST]
    else:
        return state.eval_log[-1]["loss"]
    # The best weights were written by this run (no manifest); checkpoints are verified against theirs.
    load_average(accelerator.unwrap_model(model), folders, verify=not args.keep_best)
    loader = evaluation_loader(
        eval_dataset, collator, args.seed, accelerator.num_processes, args.batch_size, args.max_tokens
    )
    loader = accelerator.prepare(loader)
    return evaluate_loss(model, loader, accelerator)["loss"]


def final_weights_description(average_last: int, keep_best: bool, metric_for_best: str) -> str:
    """The model card's sentence on which weights the run ended with (empty for the last ones)."""
    if average_last:
        return f" The weights are the parameter mean of the last {average_last} checkpoints (§6.1)."
    if keep_best:
        metric = "validation BLEU" if metric_for_best == "bleu" else "validation loss"
        return f" The weights are those of the evaluation with the best {metric} (`--keep-best`)."
    return ""
