"""The main-job study (benchmarks/main_job_study.py): every variant is a valid `vaswani-train` command that changes
what it says, the warm-start and decoding variants record the model they are about, and the report reads what the
runs recorded."""

import json
import subprocess
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from conftest import corpus_tokenizer, import_script, tiny_model
from vaswani import VaswaniForConditionalGeneration
from vaswani.training import corpus
from vaswani.training.arguments import parse_arguments

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "main_job_study.py"


@pytest.fixture(scope="module")
def study():
    return import_script(SCRIPT)


def changed_options(study, name: str, folder: Path) -> set[str]:
    arguments = vars(parse_arguments(study.command(name, folder)[3:]))
    main_job = vars(parse_arguments(study.command("main-job", folder)[3:]))
    return {key for key, value in arguments.items() if value != main_job[key]} - {"output_dir"}


def test_the_main_job_variant_is_vaswani_train_without_options(study, tmp_path):
    assert study.VARIANTS["main-job"][0] == []
    defaults = vars(parse_arguments(["--output-dir", str(tmp_path / "main-job")]))
    assert vars(parse_arguments(study.command("main-job", tmp_path)[3:])) == defaults


@pytest.mark.parametrize("name", [name for name in import_script(SCRIPT).VARIANTS if name != "main-job"])
def test_each_variant_changes_exactly_the_options_it_names(study, name, tmp_path):
    flags = study.VARIANTS[name][0]
    named = {flag[2:].replace("-", "_") for flag in flags if flag.startswith("--")}
    # --batch-size switches token batches off: max_tokens is then unset, the one option it changes unnamed.
    implied = {"max_tokens"} if "batch_size" in named else set()
    changed = changed_options(study, name, tmp_path)
    assert changed and changed <= named | implied, (changed, named)


def test_the_warm_start_variant_records_the_warm_started_model_and_its_own_minutes(study, tmp_path, monkeypatch):
    summary = {"from-scratch": {"bleu": 16.0, "chrf": 40.0, "validation_loss": 2.9},
               "warm-started": {"bleu": 14.0, "chrf": 38.0, "validation_loss": 2.8},
               "minutes": {"total": 30.0, "from-scratch": 12.0}}  # fmt: skip

    def finished_run(command, **kwargs):
        run_dir = Path(command[command.index("--output-dir") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "warm_start_comparison.json").write_text(json.dumps(summary))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(study.subprocess, "run", finished_run)
    result = study.run_variant("warm-start", tmp_path, threads=2)
    assert parse_arguments(study.command("warm-start", tmp_path)[3:]).pretrain_steps == 300
    assert (result["bleu"], result["chrf"], result["validation_loss"]) == (14.0, 38.0, 2.8)
    assert result["from_scratch_bleu"] == 16.0
    assert result["cpu_minutes"] == pytest.approx(2 * (result["wall_minutes"] - 12.0))


def test_decoding_variants_translate_again_with_the_reference_model(study, tmp_path, monkeypatch):
    tokenizer = corpus_tokenizer(model_max_length=128)
    model_dir = tmp_path / "reference" / "model"
    tiny_model(VaswaniForConditionalGeneration, tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    test = Dataset.from_dict({"en": ["In the beginning.", "And God said."], "es": ["En el principio.", "Y dijo Dios."]})
    monkeypatch.setattr(corpus, "load_parallel_corpus", lambda: DatasetDict({"test": test}))
    reference = {"variant": "reference", "flags": "", "bleu": 5.0, "chrf": 20.0, "validation_loss": 3.0,
                 "cpu_minutes": 20}  # fmt: skip
    (tmp_path / "results.jsonl").write_text(json.dumps(reference) + "\n")

    rows = study.decode_variants(["beams-1", "length-penalty-1.0"], tmp_path, threads=1)
    assert [row["variant"] for row in rows] == ["beams-1", "length-penalty-1.0"]
    for row in rows:
        assert row["decoded_from"] == "reference" and row["validation_loss"] == 3.0
        assert 0 <= row["bleu"] <= 100 and row["chrf"] >= 0
        assert row["cpu_minutes"] == pytest.approx(20, abs=1)  # the reference's, decoding time swapped


def test_report_ranks_the_newest_result_of_each_variant_and_plots(study, tmp_path):
    results = [
        {"variant": "reference", "flags": "", "bleu": 9.0, "chrf": 25.0, "validation_loss": 4.0, "cpu_minutes": 8.0},
        {"variant": "lr-1e-3", "flags": "--learning-rate 1e-3", "bleu": 11.0, "chrf": 28.0, "validation_loss": 3.8,
         "cpu_minutes": 8.0},
        {"variant": "reference", "flags": "", "bleu": 10.0, "chrf": 26.0, "validation_loss": 3.9, "cpu_minutes": 9.0},
        {"variant": "depth-3", "error": "exit 1"},
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(result) + "\n" for result in results))
    heading, table = study.report(tmp_path).split("\n\n")
    table = table.splitlines()
    assert heading.startswith("Old test set")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["lr-1e-3", "reference"]
    assert "| 10.00 |" in table[3] and "66.7" in table[3]  # the newer reference; 60 * 10 / 9 BLEU per CPU-hour
    assert (tmp_path / "bleu_vs_cpu_minutes.png").stat().st_size > 0


def test_decoding_variants_without_a_reference_run_are_refused_by_name(study, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(["--variants", "beams-8", "--output", str(tmp_path)])
    assert "beams-8 decode the reference run's model: run --variants reference" in capsys.readouterr().err


def test_report_gives_each_run_with_its_interval_and_each_variant_its_mean_over_seeds(study, tmp_path):
    run = {"flags": "--d-model 192", "chrf": 40.0, "validation_loss": 2.5, "cpu_minutes": 20.0, "wall_minutes": 10.0,
           "threads": 2, "translated_examples": 2148, "looping_translations": 30, "machine": "quiet"}  # fmt: skip
    results = [
        {**run, "variant": "main-width-192", "seed": 42, "bleu": 19.0, "bleu_ci95": 0.61},
        {**run, "variant": "main-width-192", "seed": 1, "bleu": 21.0, "bleu_ci95": 0.63},
        {**run, "variant": "main-job", "flags": "", "seed": 42, "bleu": 18.0, "bleu_ci95": 0.6},
        {"variant": "main-job", "flags": "", "bleu": 18.44, "chrf": 38.8, "validation_loss": 2.7, "cpu_minutes": 19.8},
    ]  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(result) + "\n" for result in results))
    runs, means, old = study.report(tmp_path).split("\n\n", 2)
    assert "| main-width-192 | `--d-model 192` | 1 | 21.00 ± 0.63 | 40.00 | 2.500 | 30 | 2 | 10.0 | quiet |" in runs
    ranked = [line.split("|")[1:4] for line in means.splitlines()[2:]]
    assert [[cell.strip() for cell in row] for row in ranked] == [["main-width-192", "2", "20.00 ± 1.41"],
                                                                  ["main-job", "1", "18.00"]]  # fmt: skip
    assert old.startswith("Old test set") and "| 18.44 |" in old  # measured on 217 verses: kept apart
