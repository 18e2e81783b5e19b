"""The main-job study (benchmarks/main_job_study.py): every variant is a valid `vaswani-train` command that changes
what it says, and the report reads what the runs recorded."""

import json
from pathlib import Path

import pytest

from conftest import import_script
from vaswani.training.arguments import TrainArguments, parse_arguments

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "main_job_study.py"


@pytest.fixture(scope="module")
def study():
    return import_script(SCRIPT)


@pytest.mark.parametrize("name", ["baseline", "steps-4000", "tokens-2048", "width-256", "average-5", "smoothing-0"])
def test_each_variant_is_a_valid_training_command_that_changes_one_lever(study, name, tmp_path):
    argv = study.command(name, tmp_path)[3:]  # without `python -m vaswani.training`
    arguments = parse_arguments(argv)
    baseline = parse_arguments(study.command("baseline", tmp_path)[3:])
    changed = {key for key, value in vars(arguments).items() if value != vars(baseline)[key]} - {"output_dir"}
    assert (changed == set()) == (name == "baseline"), changed
    assert arguments.pretrain_steps == 0 and isinstance(arguments, TrainArguments)


def test_every_variant_parses(study, tmp_path):
    for name in study.VARIANTS:
        parse_arguments(study.command(name, tmp_path)[3:])


def test_report_ranks_the_newest_result_of_each_variant_and_plots(study, tmp_path):
    results = [
        {"variant": "baseline", "flags": "", "bleu": 9.0, "chrf": 25.0, "validation_loss": 4.0, "cpu_minutes": 8.0},
        {"variant": "lr-2e-3", "flags": "--learning-rate 2e-3", "bleu": 11.0, "chrf": 28.0, "validation_loss": 3.8,
         "cpu_minutes": 8.0},
        {"variant": "baseline", "flags": "", "bleu": 10.0, "chrf": 26.0, "validation_loss": 3.9, "cpu_minutes": 9.0},
        {"variant": "depth-3", "error": "exit 1"},
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(result) + "\n" for result in results))
    table = study.report(tmp_path).splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["lr-2e-3", "baseline"]
    assert "| 10.00 |" in table[3] and "66.7" in table[3]  # the newer baseline; 60 * 10 / 9 BLEU per CPU-hour
    assert (tmp_path / "bleu_vs_cpu_minutes.png").stat().st_size > 0
