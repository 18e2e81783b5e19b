"""`vaswani-train` / `python -m vaswani.training`: parse the options, run, print what was measured."""

import sys

from accelerate import PartialState

from vaswani.training.arguments import parse_arguments
from vaswani.training.run import RunResult, run, run_main_job


def report(result: RunResult) -> str:
    lines = [f"Finished in {result.seconds / 60:.1f} min. Model: {result.model_dir}"]
    lines += [f"  {name}: {value:.2f}" if isinstance(value, float) else f"  {name}: {value}" for name, value in result.metrics.items()]
    for example in result.examples:
        lines += ["", f"  source:      {example['source']}", f"  reference:   {example['reference']}", f"  translation: {example['translation']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    result = run_main_job(args) if args.compares_warm_start() else run(args)
    if PartialState().is_main_process:
        print(report(result))
    PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
