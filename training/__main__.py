"""`vaswani-train` / `python -m vaswani.training`: parse the options, run, print what was measured."""

import json
import sys
from pathlib import Path

from accelerate import PartialState

from vaswani.configuration.errors import InputError
from vaswani.training.arguments import parse_arguments
from vaswani.training.loop import RunStopped
from vaswani.training.output_folder import WARM_START_SUMMARY
from vaswani.training.run import RunResult, run, run_warm_start_comparison


def report(result: RunResult) -> str:
    lines = [f"Finished in {result.seconds / 60:.1f} min. Model: {result.model_dir}"]
    for name, value in result.metrics.items():
        lines.append(f"  {name}: {value:.2f}" if isinstance(value, float) else f"  {name}: {value}")
    for example in result.examples:
        lines += ["", f"  source:      {example['source']}", f"  reference:   {example['reference']}"]
        lines.append(f"  translation: {example['translation']}")
    return "\n".join(lines)


def comparison_report(output_dir: str) -> str:
    """The answer to "does warm-starting help?", from the summary run_warm_start_comparison wrote."""
    summary = json.loads((Path(output_dir) / WARM_START_SUMMARY).read_text())
    lines = ["Warm start, same translation steps:"]
    for name in ("from-scratch", "warm-started"):
        metrics = summary[name]
        minutes = summary["minutes"][name]
        lines.append(f"  {name:13} BLEU {metrics['bleu']:5.2f}  chrF {metrics['chrf']:5.2f}  ({minutes:.1f} min)")
    return "\n".join([*lines, f"  kept: {summary['kept']}", ""])


def stopped(message: str, exit_code: int) -> int:
    if PartialState().is_main_process:
        print(f"vaswani-train: {message}", file=sys.stderr)
    PartialState().destroy_process_group()
    return exit_code


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(argv)
        compares = args.compares_warm_start()
        result = run_warm_start_comparison(args) if compares else run(args)
    except InputError as error:  # a flag, file, dataset or checkpoint to fix: the message says which and how
        return stopped(f"error: {error}", 2)
    except RunStopped as stop:  # a signal or a diverging loss: the message says what was kept and how to go on
        return stopped(str(stop), stop.exit_code)
    except OSError as error:  # the machine's, not the code's: a full disk, a permission; the message names the file
        return stopped(f"error: {error}", 1)
    if PartialState().is_main_process:
        print(("\n" + comparison_report(args.output_dir) if compares else "") + report(result))
    PartialState().destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
