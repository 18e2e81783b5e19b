"""What buys translation quality per CPU-minute on the embedded corpus: the study behind the main job's defaults.

Each variant is one `vaswani-train` command. The levers (learning rate, schedule and warm-up, tokens per batch, width
and depth at equal time, vocabulary, dropout, label smoothing, the longest example, checkpoint averaging,
warm-starting from pretrained stacks) each change one thing in a reference recipe; `main-job` is the defaults, which
combine the levers that paid, and `previous-*` is the main job as it was before the study. Runs go in subprocesses,
`--jobs` at a time with `--threads` each (two single-thread runs on a 2-core machine use it fully), and each appends
one line to `OUTPUT/results.jsonl`: test BLEU and chrF (beam 4, length penalty 0.6), validation loss, and the
CPU-minutes it took (wall minutes x threads, everything included). The decoding variants (beam size, length
penalty) retrain nothing: they translate the test books again with the reference run's model. `--report` turns the
lines gathered so far into a Markdown table and a plot of BLEU against CPU-minutes.

    python benchmarks/main_job_study.py --list
    python benchmarks/main_job_study.py --variants reference,dropout-0.1 --jobs 2 --threads 1
    python benchmarks/main_job_study.py --variants beams-1,beams-8      # after the reference run
    python benchmarks/main_job_study.py --report

Run it on an otherwise idle machine: the minutes are the point.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vaswani.training.arguments import parse_arguments

# Every run trains from scratch: the warm-start comparison is a variant of its own.
COMMON = ["--pretrain-steps", "0"]
# The recipe each lever was measured against, and the main job before the study, as flags on top of the defaults.
REFERENCE = {"--max-tokens": "4096", "--max-steps": "1200", "--learning-rate": "2e-3"}
PREVIOUS = {"--batch-size": "32", "--learning-rate": "1e-3", "--lr-scheduler": "inverse_sqrt", "--dropout": "0.1",
            "--max-length": "64", "--max-steps": "2000"}  # fmt: skip


def recipe(base: dict[str, str], **changes: str | None) -> list[str]:
    """`base`'s flags, some changed (`max_steps="4000"`), added, or dropped (`batch_size=None`)."""
    flags = {**base, **{"--" + name.replace("_", "-"): value for name, value in changes.items()}}
    return [item for name, value in flags.items() if value is not None for item in (name, value)]


def reference(**changes: str | None) -> list[str]:
    return recipe(REFERENCE, **changes)


def previous(**changes: str | None) -> list[str]:
    return recipe(PREVIOUS, **changes)


def main_job(**changes: str | None) -> list[str]:
    return recipe({}, **changes)


# Equal time: steps scaled by the time per step relative to the reference's (measured with 2 threads).
VARIANTS = {
    "main-job": ([], "the defaults: 2700 steps of 2048-token batches, lr 4e-3 decayed linearly to 0, no dropout"),
    # The levers tried on the main job itself (issue 24), on the 2,148-verse test set.
    "main-job-2400": (main_job(max_steps="2400"), "the main job before issue 24: 2400 steps"),
    "main-width-192": (
        main_job(d_model="192", ffn_dim="768", max_steps="1860"), "main-job-2400, d_model 192 and d_ff 768, equal time"
    ),
    "main-width-192-lr-2e-3": (
        main_job(d_model="192", ffn_dim="768", max_steps="1900", learning_rate="2e-3"),
        "the main job, d_model 192 and d_ff 768 at the reference's lr 2e-3, equal time",
    ),
    "main-smoothing-0": (main_job(label_smoothing="0"), "the main job without label smoothing"),
    "reference": (reference(), "what each lever below changes: 1200 steps of 4096-token batches, lr 2e-3"),
    "dropout-0.1": (reference(dropout="0.1"), "the paper's dropout"),
    "inverse-sqrt": (reference(lr_scheduler="inverse_sqrt"), "the paper's schedule: no decay to 0 at the end"),
    "lr-4e-3": (reference(learning_rate="4e-3"), "a higher peak learning rate"),
    "lr-1e-3": (reference(learning_rate="1e-3"), "a lower peak learning rate"),
    "warmup-600": (reference(warmup_steps="600"), "a longer warm-up"),
    "tokens-2048": (reference(max_tokens="2048", max_steps="2400"), "half the batch, twice the steps (equal tokens)"),
    "tokens-8192": (reference(max_tokens="8192", max_steps="600"), "twice the batch, half the steps (equal tokens)"),
    "vocab-2000": (
        reference(vocab_size="2000", max_steps="1400"), "a smaller vocabulary (cheaper steps, so 1400 of them)"
    ),
    "vocab-8000": (reference(vocab_size="8000"), "a larger vocabulary (about as fast per step)"),
    "width-192": (reference(d_model="192", ffn_dim="768", max_steps="930"), "wider, equal time"),
    "width-256": (reference(d_model="256", ffn_dim="1024", max_steps="640"), "wider still, equal time"),
    "depth-3": (reference(layers="3", max_steps="1030"), "three layers per stack, equal time"),
    "smoothing-0": (reference(label_smoothing="0"), "no label smoothing"),
    "max-length-64": (reference(max_length="64"), "examples cut at 64 tokens (a fifth of the test verses are longer)"),
    "average-5": (reference(save_steps="100", save_total_limit="5", average_last="5"), "the last 5 averaged"),
    "warm-start": (reference(pretrain_steps="300"), "pretrain an encoder (mlm) and a decoder (clm), 300 steps each"),
    "beams-1": (reference(num_beams="1"), "greedy decoding"),
    "beams-8": (reference(num_beams="8"), "a wider beam"),
    "length-penalty-1.0": (reference(length_penalty="1.0"), "a stronger length normalisation"),
    "previous-main-job": (previous(), "the main job before this study: 2000 steps of 32 pairs, lr 1e-3, inverse sqrt"),
    "previous-steps-4000": (previous(max_steps="4000"), "the same, twice as long"),
    "previous-lr-2e-3": (previous(learning_rate="2e-3"), "the same, higher learning rate"),
    "previous-tokens-4096-lr-2e-3": (
        previous(batch_size=None, max_tokens="4096", learning_rate="2e-3"), "token batches, higher learning rate"
    ),
    "previous-average-5": (
        previous(save_steps="200", save_total_limit="5", average_last="5"), "its last 5 checkpoints averaged"
    ),
}
# Decoding variants change nothing in training: they are scored on the reference run's model (decode_variants).
DECODED_FROM = "reference"
DECODING = ("beams-1", "beams-8", "length-penalty-1.0")


def run_name(name: str, seed: int | None) -> str:
    """A run's folder and log name: the variant's, with the seed when it is not the default."""
    return name if seed is None else f"{name}-seed-{seed}"


def command(name: str, output: Path, seed: int | None = None) -> list[str]:
    flags, _ = VARIANTS[name]
    seeded = [] if seed is None else ["--seed", str(seed)]
    folder = output / run_name(name, seed)
    return [sys.executable, "-m", "vaswani.training", *COMMON, *flags, *seeded, "--output-dir", str(folder)]


def run_variant(name: str, output: Path, threads: int, seed: int | None = None, machine: str = "") -> dict:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    folder = run_name(name, seed)
    log = output / f"{folder}.log"
    started = time.perf_counter()
    with log.open("w") as log_file:
        finished = subprocess.run(
            command(name, output, seed), env=environment, stdout=log_file, stderr=subprocess.STDOUT
        )
    minutes = (time.perf_counter() - started) / 60
    if finished.returncode:
        return {"variant": name, "error": f"exit {finished.returncode}, see {log}"}
    result = {"variant": name, "flags": " ".join(VARIANTS[name][0]), "wall_minutes": minutes, "threads": threads,
              "seed": parse_arguments(command(name, output, seed)[3:]).seed, "machine": machine}  # fmt: skip
    comparison = output / folder / "warm_start_comparison.json"
    if comparison.exists():  # the warm-started model, timed without the from-scratch run it was compared with
        summary = json.loads(comparison.read_text())
        minutes -= summary["minutes"]["from-scratch"]
        metrics = summary["warm-started"]
        result["from_scratch_bleu"] = summary["from-scratch"]["bleu"]
    else:
        metrics = json.loads((output / folder / "model" / "all_results.json").read_text())
    scores = {key: metrics[key] for key in (*SCORES, *OPTIONAL_SCORES) if key in metrics}
    return {**result, **scores, "cpu_minutes": minutes * threads}


SCORES = ("bleu", "chrf", "validation_loss")
# Recorded since the test set became seven books (2,148 verses): sacrebleu's bootstrap interval and the loops.
OPTIONAL_SCORES = ("bleu_ci95", "chrf_ci95", "looping_translations", "translated_examples")


def decode_variants(names: list[str], output: Path, threads: int) -> list[dict]:
    """The decoding variants scored on the model of the finished DECODED_FROM run: its training is theirs, so only the
    test translations are redone. Their CPU-minutes are that run's, with its decoding time swapped for theirs."""
    import torch
    from transformers import AutoTokenizer

    from vaswani import VaswaniForConditionalGeneration
    from vaswani.modeling.pipelines import translate
    from vaswani.training.corpus import load_parallel_corpus
    from vaswani.training.evaluation import corpus_scores

    torch.set_num_threads(threads)
    trained = newest_results(output)[DECODED_FROM]
    model_dir = output / DECODED_FROM / "model"
    model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    test = load_parallel_corpus()["test"]

    def decode(name: str) -> tuple[dict, float]:
        arguments = parse_arguments(command(name, output)[3:])
        started = time.perf_counter()
        hypotheses = translate(
            model, tokenizer, test[arguments.source_column], num_beams=arguments.num_beams,
            length_penalty=arguments.length_penalty, max_new_tokens=arguments.max_length + 50,
        )  # fmt: skip
        return corpus_scores(hypotheses, test[arguments.target_column]), (time.perf_counter() - started) / 60

    _, trained_minutes = decode(DECODED_FROM)
    rows = []
    for name in names:
        scores, minutes = decode(name)
        cpu_minutes = trained["cpu_minutes"] + (minutes - trained_minutes) * threads
        rows.append({
            "variant": name, "flags": " ".join(VARIANTS[name][0]), **scores, "cpu_minutes": cpu_minutes,
            "validation_loss": trained["validation_loss"], "decoded_from": DECODED_FROM, "threads": threads,
        })  # fmt: skip
    return rows


def record(result: dict, output: Path) -> None:
    with (output / "results.jsonl").open("a") as file:  # one short write per run: parallel runs do not interleave
        file.write(json.dumps(result) + "\n")
    print(json.dumps(result), file=sys.stderr, flush=True)


def run_study(
    names: list[str], output: Path, jobs: int, threads: int, seeds: list[int | None] = (None,), machine: str = ""
) -> None:
    output.mkdir(parents=True, exist_ok=True)

    def run_and_record(run: tuple[str, int | None]) -> None:
        record(run_variant(*run[:1], output, threads, seed=run[1], machine=machine), output)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run_and_record, [(name, seed) for name in names for seed in seeds]))


def newest_results(output: Path) -> dict[str, dict]:
    """The newest successful line of each variant in OUTPUT/results.jsonl (none before the first run)."""
    results = output / "results.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    return {result["variant"]: result for result in lines if "error" not in result}


def report(output: Path) -> str:
    """The results gathered so far as Markdown tables, and the plot: every run on today's test set (2,148 verses since
    issue 24; those lines record `translated_examples`), each variant's mean over its seeds, and the newest line of
    each variant measured on the old test set (217 verses), which does not compare with the others."""
    lines = all_results(output)
    runs = [result for result in lines if "translated_examples" in result]
    old = {result["variant"]: result for result in lines if "translated_examples" not in result}
    sections = [runs_table(runs), seeds_table(runs)] if runs else []
    if old:
        sections.append("Old test set (Esther, Philemon, Jude: 217 verses):\n\n" + old_split_table(old.values()))
    summary = [mean_row(variant_runs) for variant_runs in by_variant(runs).values()]
    plot(summary or list(old.values()), output / "bleu_vs_cpu_minutes.png")
    return "\n\n".join(sections)


def all_results(output: Path) -> list[dict]:
    """Every successful line of OUTPUT/results.jsonl, in order."""
    results = output / "results.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    return [result for result in lines if "error" not in result]


def by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    grouped = {}
    for result in runs:
        grouped.setdefault(result["variant"], []).append(result)
    return grouped


def runs_table(runs: list[dict]) -> str:
    """One row a run: its seed, scores with sacreBLEU's interval, loops, minutes and what else ran meanwhile."""
    table = ["| variant | flags | seed | test BLEU (95% CI) | chrF | validation loss | looping | threads "
             "| wall minutes | machine |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for result in runs:
        interval = "" if result.get("bleu_ci95") is None else f" ± {result['bleu_ci95']:.2f}"
        table.append(
            f"| {result['variant']} | `{result['flags'] or '(defaults)'}` | {result.get('seed', '-')} "
            f"| {result['bleu']:.2f}{interval} | {result['chrf']:.2f} | {format_loss(result.get('validation_loss'))} "
            f"| {result.get('looping_translations', '-')} | {result['threads']} | {result['wall_minutes']:.1f} "
            f"| {result.get('machine') or '-'} |"
        )
    return "\n".join(table)


def mean_row(runs: list[dict]) -> dict:
    """A variant's runs in one row: means, and the BLEU's spread (sample standard deviation over seeds)."""
    mean = {key: statistics.mean(result[key] for result in runs) for key in ("bleu", "chrf", "cpu_minutes")}
    losses = [result["validation_loss"] for result in runs if result.get("validation_loss") is not None]
    spread = statistics.stdev(result["bleu"] for result in runs) if len(runs) > 1 else None
    return {**runs[0], **mean, "validation_loss": statistics.mean(losses) if losses else None, "bleu_spread": spread,
            "runs": len(runs)}  # fmt: skip


def seeds_table(runs: list[dict]) -> str:
    """Each variant's mean over its runs (seeds), ranked by mean BLEU."""
    rows = sorted((mean_row(variant_runs) for variant_runs in by_variant(runs).values()), key=lambda row: -row["bleu"])
    table = ["| variant | runs | test BLEU, mean ± sd | chrF | validation loss | CPU-minutes |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        spread = "" if row["bleu_spread"] is None else f" ± {row['bleu_spread']:.2f}"
        table.append(
            f"| {row['variant']} | {row['runs']} | {row['bleu']:.2f}{spread} | {row['chrf']:.2f} "
            f"| {format_loss(row['validation_loss'])} | {row['cpu_minutes']:.1f} |"
        )
    return "\n".join(table)


def old_split_table(results) -> str:
    rows = sorted(results, key=lambda result: -result["bleu"])
    table = ["| variant | flags | test BLEU | chrF | validation loss | CPU-minutes | BLEU per CPU-hour |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for result in rows:
        table.append(
            f"| {result['variant']} | `{result['flags'] or '(defaults)'}` | {result['bleu']:.2f} | {result['chrf']:.2f} "
            f"| {format_loss(result.get('validation_loss'))} | {result['cpu_minutes']:.1f} | "
            f"{60 * result['bleu'] / result['cpu_minutes']:.1f} |"
        )
    return "\n".join(table)


def format_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.3f}"  # None: scored on a model that was not evaluated on validation


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for result in rows:  # the bar: the BLEU's standard deviation over seeds, where a variant ran with several
        axes.errorbar(result["cpu_minutes"], result["bleu"], yerr=result.get("bleu_spread"), fmt="o", capsize=3)
        axes.annotate(result["variant"], (result["cpu_minutes"], result["bleu"]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")  # fmt: skip
    axes.set(xlabel="CPU-minutes (wall minutes x threads, everything included)", ylabel="test BLEU",
             title="Embedded corpus, en->es: test BLEU (mean over seeds) against CPU time")  # fmt: skip
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="all", help="Comma-separated names (see --list), or 'all'.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time.")
    parser.add_argument("--threads", type=int, default=1, help="Threads per run (OMP_NUM_THREADS).")
    parser.add_argument("--output", type=Path, default=Path("runs/main-job-study"))
    parser.add_argument("--seeds", help="Comma-separated --seed values, one run of each variant per seed "
                        "(default: the variant's own seed, one run).")  # fmt: skip
    parser.add_argument("--machine", default="", help="What else ran meanwhile, recorded with each run ('quiet', "
                        "'shared: test suite'): the minutes mean little without it.")  # fmt: skip
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
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
        trained = [name for name in names if name not in DECODING]
        run_study(trained, args.output, args.jobs, args.threads, seeds, args.machine)
        if decoding := [name for name in names if name in DECODING]:
            if DECODED_FROM not in newest_results(args.output):
                needed = f"run --variants {DECODED_FROM}"
                parser.error(f"{', '.join(decoding)} decode the {DECODED_FROM} run's model: {needed}")
            for row in decode_variants(decoding, args.output, args.threads):
                record(row, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
