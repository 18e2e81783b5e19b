"""What buys translation quality per CPU-minute on the embedded corpus: the study behind the main job's defaults.

Each variant is one `vaswani-train` run from scratch (`--pretrain-steps 0`) that changes one lever against the
main job's current defaults: training length, learning rate and warm-up, tokens per batch, width and depth, vocabulary,
dropout and label smoothing, checkpoint averaging. Runs go in subprocesses, `--jobs` at a time with `--threads`
each (two single-thread runs on a 2-core machine use it fully and do not disturb each other's timings), and each
appends one line to `OUTPUT/results.jsonl`: test BLEU and chrF (beam 4, length penalty 0.6), validation loss, and
the CPU-minutes it took (wall minutes x threads, everything included). `--report` turns the lines gathered so far
into a Markdown table and a plot of BLEU against CPU-minutes.

    python benchmarks/main_job_study.py --list
    python benchmarks/main_job_study.py --variants baseline,steps-4000 --jobs 2 --threads 1
    python benchmarks/main_job_study.py --report

Run it on an otherwise idle machine: the minutes are the point.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Every run: from scratch, the main job's data and evaluation; checkpoints rarely (they cost time, not quality).
COMMON = ["--pretrain-steps", "0", "--save-steps", "1000", "--eval-steps", "500"]
VARIANTS = {
    "baseline": ([], "the main job's translation run as it is (2000 steps of 32 pairs, lr 1e-3, warm-up 200)"),
    "steps-4000": (["--max-steps", "4000"], "the same, twice as long: is the model still learning?"),
    "steps-8000": (["--max-steps", "8000"], "four times as long"),
    "lr-2e-3": (["--learning-rate", "2e-3"], "a higher peak learning rate"),
    "lr-5e-4": (["--learning-rate", "5e-4"], "a lower peak learning rate"),
    "warmup-800": (["--warmup-steps", "800"], "a longer warm-up"),
    "tokens-2048": (["--max-tokens", "2048"], "token batches of ~55 pairs instead of 32 sentences"),
    "tokens-4096-lr-2e-3": (["--max-tokens", "4096", "--learning-rate", "2e-3"], "~110 pairs a batch, higher lr"),
    "width-256": (["--d-model", "256", "--ffn-dim", "1024", "--max-steps", "1000"], "wider, half the steps"),
    "depth-3": (["--layers", "3"], "three layers per stack"),
    "vocab-8000": (["--vocab-size", "8000"], "a larger shared vocabulary"),
    "vocab-2000": (["--vocab-size", "2000"], "a smaller shared vocabulary"),
    "dropout-0.3": (["--dropout", "0.3"], "more dropout (31k pairs is small data)"),
    "smoothing-0": (["--label-smoothing", "0"], "no label smoothing"),
    "average-5": (["--save-steps", "200", "--save-total-limit", "5", "--average-last", "5"], "the last 5 averaged"),
}


def command(name: str, output: Path) -> list[str]:
    flags, _ = VARIANTS[name]
    return [sys.executable, "-m", "vaswani.training", *COMMON, *flags, "--output-dir", str(output / name)]


def run_variant(name: str, output: Path, threads: int) -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = output / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as log_file:
        finished = subprocess.run(command(name, output), env=environment, stdout=log_file, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - started) / 60
    if finished.returncode:
        return {"variant": name, "error": f"exit {finished.returncode}, see {log}"}
    metrics = json.loads((output / name / "model" / "all_results.json").read_text())
    return {
        "variant": name, "flags": " ".join(VARIANTS[name][0]), "bleu": metrics["bleu"], "chrf": metrics["chrf"],
        "validation_loss": metrics["validation_loss"], "wall_minutes": minutes, "cpu_minutes": minutes * threads,
        "threads": threads,
    }  # fmt: skip


def run_study(names: list[str], output: Path, jobs: int, threads: int) -> None:
    output.mkdir(parents=True, exist_ok=True)
    results = output / "results.jsonl"

    def run_and_record(name: str) -> None:
        result = run_variant(name, output, threads)
        with results.open("a") as file:  # one short write per run: parallel runs do not interleave lines
            file.write(json.dumps(result) + "\n")
        print(json.dumps(result), file=sys.stderr, flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run_and_record, names))


def report(output: Path) -> str:
    """The results gathered so far (the newest line of each variant) as a Markdown table, and the plot."""
    lines = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines() if line.strip()]
    newest = {result["variant"]: result for result in lines if "error" not in result}
    rows = sorted(newest.values(), key=lambda result: -result["bleu"])
    table = ["| variant | flags | test BLEU | chrF | validation loss | CPU-minutes | BLEU per CPU-hour |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for result in rows:
        table.append(
            f"| {result['variant']} | `{result['flags'] or '(defaults)'}` | {result['bleu']:.2f} | {result['chrf']:.2f} "
            f"| {result['validation_loss']:.3f} | {result['cpu_minutes']:.1f} | "
            f"{60 * result['bleu'] / result['cpu_minutes']:.1f} |"
        )
    plot(rows, output / "bleu_vs_cpu_minutes.png")
    return "\n".join(table)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for result in rows:
        axes.scatter(result["cpu_minutes"], result["bleu"])
        axes.annotate(result["variant"], (result["cpu_minutes"], result["bleu"]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")  # fmt: skip
    axes.set(xlabel="CPU-minutes (wall minutes x threads, everything included)", ylabel="test BLEU",
             title="Embedded corpus, en->es: test BLEU against CPU time")  # fmt: skip
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="all", help="Comma-separated names (see --list), or 'all'.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time.")
    parser.add_argument("--threads", type=int, default=1, help="Threads per run (OMP_NUM_THREADS).")
    parser.add_argument("--output", type=Path, default=Path("runs/main-job-study"))
    parser.add_argument("--list", action="store_true", help="Print each variant's command and purpose, run nothing.")
    parser.add_argument("--report", action="store_true", help="Print the table of the results so far, write the plot.")
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    if unknown := [name for name in names if name not in VARIANTS]:
        parser.error(f"unknown variants {', '.join(unknown)}; --list shows them")
    if args.list:
        for name in names:
            print(f"{name}: {VARIANTS[name][1]}\n  {shlex.join(command(name, args.output))}")
    elif args.report:
        print(report(args.output))
    else:
        run_study(names, args.output, args.jobs, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
