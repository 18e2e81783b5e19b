"""Checkpoint averaging (§6.1): the final model is the parameter mean of the last N checkpoints of a run.

The paper averages the last 5 checkpoints of the base model and the last 20 of the big one, written at 10-minute
intervals. `--average-last N` does it at the end of `vaswani-train`; `vaswani-average-checkpoints RUN_DIR --last N
--output DIR` does it for any run's output folder and writes a Hub-ready folder.

Weights are read with safetensors only (no unpickling), from checkpoints verified against their manifest first. The
mean is accumulated in float64 and cast back to each tensor's dtype, so it is the mean of the stored values, not of
rounded partial sums. Tied weights are stored once in a checkpoint and loaded into a model that ties them, so they
stay one tensor.
"""

import argparse
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

from vaswani import modeling
from vaswani.configuration.errors import InputError
from vaswani.training.checkpoints import checkpoint_problem, checkpoint_step, checkpoint_tokenizer, checkpoint_weights
from vaswani.training.checkpoints import last_checkpoints
from vaswani.training.export import save_for_hub
from vaswani.training.output_folder import FINAL_MODEL

def average_checkpoints(folders: list[Path], verify: bool = True) -> dict[str, torch.Tensor]:
    """The mean of every tensor in the folders' model weights (a checkpoint's, or a folder's `model.safetensors`),
    which must hold the same names and shapes; `verify` checks each checkpoint against its manifest first."""
    total, dtypes, names = {}, {}, None
    for folder in folders:
        if verify and (problem := checkpoint_problem(folder)):
            raise InputError(problem)
        with safe_open(checkpoint_weights(folder), framework="pt") as weights:
            if names is None:
                names = set(weights.keys())
            elif set(weights.keys()) != names:
                raise InputError(f"{folder} holds other weights than {folders[0]}: they are not of one model.")
            for name in names:
                tensor = weights.get_tensor(name)
                if name in total and tensor.shape != total[name].shape:
                    shapes = f"{tuple(tensor.shape)}, not {tuple(total[name].shape)}"
                    raise InputError(f"{folder}: {name} has shape {shapes}.")
                dtypes[name] = tensor.dtype
                total[name] = total[name] + tensor.double() if name in total else tensor.double()
    return {name: (summed / len(folders)).to(dtypes[name]) for name, summed in total.items()}


def load_average(model, folders: list[Path], verify: bool = True) -> None:
    """Replace `model`'s weights by the mean of the folders' (strict: every parameter must be in them, except those
    tied to one that is: a checkpoint stores tied weights once)."""
    averaged = average_checkpoints(folders, verify)
    missing, unexpected = model.load_state_dict(averaged, strict=False)
    tied_to = {}
    for copy, source in model.all_tied_weights_keys.items():
        tied_to.setdefault(copy, set()).add(source)
        tied_to.setdefault(source, set()).add(copy)
    missing = [name for name in missing if not tied_to.get(name, set()) & averaged.keys()]
    if missing or unexpected:
        raise InputError(f"The checkpoints do not fit the model: missing {missing}, unexpected {unexpected}.")


def average_run(run_dir: str | Path, count: int, output: str | Path, model_dir: str | Path | None = None) -> Path:
    """Average the last `count` checkpoints of `run_dir` into a Hub-ready folder `output`.

    The architecture comes from `model_dir` (default: the run's exported final model); the tokenizer from the newest
    checkpoint, else from `model_dir`.
    """
    folders = last_checkpoints(run_dir, count)
    model_dir = Path(model_dir) if model_dir is not None else Path(run_dir) / FINAL_MODEL
    if not (model_dir / "config.json").is_file():
        raise InputError(
            f"{model_dir} has no config.json to build the model from (a run writes it when it finishes): name a "
            "folder with the run's config, e.g. another export of the same architecture, with --model-dir."
        )
    model = model_for(AutoConfig.from_pretrained(model_dir))
    load_average(model, folders)
    saved = checkpoint_tokenizer(folders[-1])
    tokenizer = AutoTokenizer.from_pretrained(saved if saved.is_dir() else model_dir)
    steps = ", ".join(str(checkpoint_step(folder)) for folder in folders)
    card = {"training": f"Parameter mean of the last {count} checkpoints of `{run_dir}` (steps {steps}), as §6.1."}
    return save_for_hub(model, tokenizer, output, card=card)


def model_for(config):
    """A new model of the class the config's `architectures` names, from this package (no remote code runs)."""
    name = (config.architectures or [None])[0]
    if not hasattr(modeling, str(name)):
        raise InputError(f"The run's config names the architecture {name!r}, which is not a class of vaswani.")
    return getattr(modeling, name)(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vaswani-average-checkpoints",
        description="Average the parameters of the last N checkpoints of a vaswani-train run (the paper's §6.1) "
        "into a Hub-ready model folder.",
    )
    parser.add_argument("run_dir", help="The run's --output-dir (its checkpoints are in RUN_DIR/checkpoints).")
    parser.add_argument("--last", type=int, required=True, help="How many of the newest checkpoints to average.")
    parser.add_argument("--output", required=True, help="The folder to write the averaged model to.")
    parser.add_argument("--model-dir", help="A folder with the run's config.json. Default: RUN_DIR/model.")
    args = parser.parse_args(argv)
    try:
        output = average_run(args.run_dir, args.last, args.output, args.model_dir)
    except ValueError as error:
        parser.exit(2, f"vaswani-average-checkpoints: error: {error}\n")
    print(f"Averaged the last {args.last} checkpoints of {args.run_dir} into {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
