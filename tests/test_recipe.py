"""The paper's recipe at scale: token-count batching, presets, checkpoint averaging, best model, validation BLEU."""

import json
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import sacrebleu
import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file

from conftest import save_pairs_tokenizer, write_pairs_file
from vaswani import VaswaniForConditionalGeneration
from vaswani.training.__main__ import main
from vaswani.training.arguments import parse_arguments
from vaswani.training.averaging import average_run, last_checkpoints
from vaswani.training.averaging import main as average_main
from vaswani.training.batching import (
    SizeSortedSampler,
    TokenBatchSampler,
    example_sizes,
    pack,
    padding_fraction,
)
from vaswani.training.corpus import load_parallel_corpus
from vaswani.training.evaluation import corpus_scores, loops
from vaswani.training.build import tokenizer_training_data
from vaswani.training.checkpoints import TrainingState
from vaswani.training.run import run
from vaswani.training.selection import PRETRAINING_SELECTION, ModelSelection

TINY_RUN = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64", "--vocab-size", "300",
            "--max-length", "48", "--warmup-steps", "2", "--logging-steps", "1", "--max-eval-examples", "4",
            "--num-beams", "1", "--pretrain-steps", "0", "--validation-fraction", "0.2"]  # fmt: skip


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """80 real English-Spanish pairs as a local JSON-lines dataset."""
    return write_pairs_file(tmp_path_factory.mktemp("data"), 80)


@pytest.fixture(scope="module")
def tokenizer_dir(pairs_file, tmp_path_factory) -> Path:
    return save_pairs_tokenizer(pairs_file, tmp_path_factory.mktemp("tokenizer"))


def tiny_args(output_dir, pairs_file, tokenizer_dir, *extra):
    data = ["--dataset", str(pairs_file), "--tokenizer", str(tokenizer_dir), "--output-dir", str(output_dir)]
    return parse_arguments([*TINY_RUN, *data, *extra])


def pairs_of_lengths(count: int, seed: int = 0) -> Dataset:
    """Tokenized pairs of varied lengths (1-40 source tokens), targets as long as their source give or take 5, as
    translations are."""
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randint(1, 41, (count,), generator=generator)
    targets = (sources + torch.randint(-5, 6, (count,), generator=generator)).clamp(min=1)
    sources, targets = sources.tolist(), targets.tolist()
    return Dataset.from_dict({"input_ids": [[5] * n for n in sources], "labels": [[6] * n for n in targets]})


def token_batches(dataset, max_tokens, replicas=1, training=True, seed=0, epoch=0) -> list[list[int]]:
    sampler = SizeSortedSampler(example_sizes(dataset), seed=seed, shuffle=training)
    batch_sampler = TokenBatchSampler(sampler, max_tokens, replicas, drop_last=training)
    batch_sampler.set_epoch(epoch)
    return list(batch_sampler)


# ----------------------------------------------------------------------------------------------- token batching


def test_token_batches_fit_the_budget_on_each_side_and_cover_every_example_once():
    dataset = pairs_of_lengths(300)
    batches = token_batches(dataset, max_tokens=200)
    assert sorted(index for batch in batches for index in batch) == list(range(300))
    for batch in batches:
        assert len(batch) * max(len(dataset[i]["input_ids"]) for i in batch) <= 200
        assert len(batch) * max(len(dataset[i]["labels"]) for i in batch) <= 200
    # Greedy packing: a batch is closed only when the next example would not fit.
    sizes = example_sizes(dataset)
    order = [index for batch in batches for index in batch]
    packed = pack(sorted(order, key=lambda i: sizes[i]), sizes, 200)
    assert all((len(b) + 1) * max(sizes[i] for i in [*b, n[0]]) > 200 for b, n in zip(packed, packed[1:]))


def test_token_batching_wastes_less_padding_than_sentence_batches_of_the_same_size():
    dataset = pairs_of_lengths(400)
    batches = token_batches(dataset, max_tokens=300)
    average = round(sum(map(len, batches)) / len(batches))
    shuffled = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    sentence_batches = [shuffled[i : i + average] for i in range(0, len(shuffled), average)]
    assert padding_fraction(batches, dataset) < 0.5 * padding_fraction(sentence_batches, dataset)


def test_the_order_is_fixed_by_seed_and_epoch():
    dataset = pairs_of_lengths(200)
    assert token_batches(dataset, 150, epoch=3) == token_batches(dataset, 150, epoch=3)
    assert token_batches(dataset, 150, epoch=3) != token_batches(dataset, 150, epoch=4)
    assert token_batches(dataset, 150, seed=1) != token_batches(dataset, 150, seed=2)


def test_every_process_gets_as_many_batches_and_evaluation_sees_each_example_once():
    dataset = pairs_of_lengths(101)
    for replicas in (2, 3, 4):
        training = token_batches(dataset, 120, replicas, training=True)
        evaluation = token_batches(dataset, 120, replicas, training=False)
        assert len(training) % replicas == 0 and len(evaluation) % replicas == 0
        assert sorted(index for batch in evaluation for index in batch) == list(range(101))
        sizes = example_sizes(dataset)
        assert all(len(batch) * max(sizes[i] for i in batch) <= 120 for batch in evaluation)


def test_max_tokens_below_the_longest_example_says_how_to_fix_it():
    dataset = pairs_of_lengths(50)
    longest = max(example_sizes(dataset))
    with pytest.raises(ValueError, match=rf"smaller than the longest example \({longest} tokens.*at least {longest}.*--max-length"):
        token_batches(dataset, longest - 1)


def test_bad_max_tokens_is_refused_by_the_parser():
    with pytest.raises(ValueError, match="--max-tokens must be positive"):
        parse_arguments(["--max-tokens", "0"])


def test_training_with_max_tokens_resumes_exactly(tmp_path, pairs_file, tokenizer_dir):
    """N steps == N/2 + resume + N/2 with token-count batches, accumulation and an epoch boundary inside."""
    # --max-steps 3 stands in for the interruption: the schedule must not depend on it (linear decay would)
    common = ["--max-tokens", "400", "--gradient-accumulation-steps", "2", "--save-steps", "3", "--eval-steps", "3",
              "--lr-scheduler", "inverse_sqrt"]  # fmt: skip
    uninterrupted = run(tiny_args(tmp_path / "a", pairs_file, tokenizer_dir, *common, "--max-steps", "6"))
    run(tiny_args(tmp_path / "b", pairs_file, tokenizer_dir, *common, "--max-steps", "3"))
    resumed = run(tiny_args(tmp_path / "b", pairs_file, tokenizer_dir, *common, "--max-steps", "6", "--resume", "latest"))
    assert [entry["loss"] for entry in resumed.state.train_log] == [entry["loss"] for entry in uninterrupted.state.train_log]
    assert resumed.state.epoch >= 1  # 64 training pairs in batches of <= 400 tokens: 12 batches pass an epoch
    weights_a = load_file(uninterrupted.model_dir / "model.safetensors")
    weights_b = load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.equal(weight, weights_b[name]) for name, weight in weights_a.items())


@pytest.mark.slow
def test_two_processes_take_turns_at_token_batches_like_one_process_accumulating(tmp_path, pairs_file, tokenizer_dir):
    """`torchrun --nproc_per_node 2` with --max-tokens M == 1 process with --max-tokens M and accumulation 2: the
    same batches in each step (process k takes batches k, k+2, ...), so the same weights. Tolerance 1e-4 after 3 Adam
    steps (the all-reduce sums in another order); dropout off, since each process draws its own masks."""
    common = [*TINY_RUN, "--dataset", str(pairs_file), "--tokenizer", str(tokenizer_dir), "--dropout", "0",
              "--max-steps", "3", "--eval-steps", "100", "--max-tokens", "150"]  # fmt: skip
    assert main([*common, "--output-dir", str(tmp_path / "one"), "--gradient-accumulation-steps", "2"]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vaswani.training"]
    completed = subprocess.run(
        [*torchrun, *common, "--output-dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "150 tokens x 1 accumulation x 2 processes = up to 300 source + 300 target tokens" in completed.stdout
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for name, weight in one.items():
        torch.testing.assert_close(two[name], weight, atol=1e-4, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    "preset, model, dropout, averaged",
    [("base", (512, 6, 8, 2048), 0.1, 5), ("big", (1024, 6, 16, 4096), 0.3, 20)],
)
def test_presets_are_table_3_with_the_papers_training_recipe(preset, model, dropout, averaged):
    args = parse_arguments(["--preset", preset])
    assert (args.d_model, args.layers, args.heads, args.ffn_dim) == model and args.dropout == dropout
    assert (args.vocab_size, args.warmup_steps, args.label_smoothing, args.lr_scheduler) == (37000, 4000, 0.1, "inverse_sqrt")
    assert args.peak_learning_rate() == pytest.approx(model[0] ** -0.5 * 4000**-0.5)  # §5.3's formula at its peak
    assert args.max_tokens == 25000 and args.average_last == averaged and args.pretrain_steps == 0


def test_explicit_options_override_a_preset_even_when_they_equal_the_default():
    args = parse_arguments(["--preset", "big", "--dropout", "0.1", "--d-model", "64", "--gradient-accumulation-steps", "8"])
    assert (args.dropout, args.d_model, args.heads) == (0.1, 64, 16)
    assert args.max_tokens == 3125  # 25000 tokens per step / (8 micro-batches x 1 process)
    assert parse_arguments(["--preset", "base", "--max-tokens", "4096"]).max_tokens == 4096
    assert parse_arguments(["--preset", "base", "--keep-best"]).average_last == 0


def test_help_documents_the_recipe_options(capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--preset {base,big}", "--max-tokens", "--average-last", "--keep-best", "--metric-for-best",
                   "--early-stopping", "--eval-bleu-steps", "Options given explicitly override the preset"):  # fmt: skip
        assert option in text, option


# ----------------------------------------------------------------------------------------------- averaging


@pytest.fixture(scope="module")
def run_with_three_checkpoints(pairs_file, tokenizer_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("run")
    run(tiny_args(output, pairs_file, tokenizer_dir, "--batch-size", "8", "--max-steps", "3", "--save-steps", "1",
                  "--save-total-limit", "3"))  # fmt: skip
    return output


def test_averaged_checkpoints_are_the_exact_mean_keep_tied_weights_and_load(run_with_three_checkpoints, tmp_path):
    folders = last_checkpoints(run_with_three_checkpoints, 3)
    average_run(run_with_three_checkpoints, 3, tmp_path / "averaged")
    model = VaswaniForConditionalGeneration.from_pretrained(tmp_path / "averaged")
    assert model.lm_head.weight is model.model.shared.weight
    checkpoints = [load_file(folder / "model.safetensors") for folder in folders]
    parameters = dict(model.named_parameters(remove_duplicate=False))
    for name, parameter in parameters.items():
        stored = name if name in checkpoints[0] else model.all_tied_weights_keys[name]
        expected = torch.stack([checkpoint[stored].double() for checkpoint in checkpoints]).mean(0).float()
        torch.testing.assert_close(parameter.data, expected, rtol=0, atol=1e-7, msg=name)
        assert not torch.equal(parameter.data, checkpoints[-1][stored]) or name.endswith("bias"), name
    for name in ("config.json", "tokenizer.json", "README.md", "modeling_vaswani.py"):
        assert (tmp_path / "averaged" / name).exists(), name


def test_averaging_more_checkpoints_than_kept_says_how_to_fix_it(run_with_three_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        average_main([str(run_with_three_checkpoints), "--last", "4", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "holds 3. Average at most 3, or train with --save-total-limit 4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--average-last 5 needs that many checkpoints.*--save-total-limit to at least 5"):
        parse_arguments(["--average-last", "5", "--save-total-limit", "2"])


def test_average_last_makes_the_final_model_the_mean_of_the_last_checkpoints(tmp_path, pairs_file, tokenizer_dir):
    result = run(tiny_args(tmp_path, pairs_file, tokenizer_dir, "--max-steps", "3", "--save-steps", "1",
                           "--save-total-limit", "3", "--average-last", "2"))  # fmt: skip
    checkpoints = [load_file(folder / "model.safetensors") for folder in last_checkpoints(tmp_path, 2)]
    final = load_file(result.model_dir / "model.safetensors")
    for name, weight in final.items():
        expected = ((checkpoints[0][name].double() + checkpoints[1][name].double()) / 2).float()
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-7, msg=name)
    assert result.metrics["validation_loss"] != result.state.eval_log[-1]["loss"]  # measured again, on the average
    assert "parameter mean of the last 2 checkpoints" in (result.model_dir / "README.md").read_text()


# ----------------------------------------------------------------------------------------------- best model, BLEU


def test_keep_best_ends_with_the_weights_of_the_lowest_validation_loss(tmp_path, pairs_file, tokenizer_dir):
    # A learning rate far too high, so that later evaluations may well be worse than earlier ones.
    result = run(tiny_args(tmp_path, pairs_file, tokenizer_dir, "--max-steps", "4", "--eval-steps", "1", "--save-steps",
                           "1", "--save-total-limit", "4", "--keep-best", "--learning-rate", "0.05", "--warmup-steps", "1"))  # fmt: skip
    losses = {entry["step"]: entry["loss"] for entry in result.state.eval_log}
    best_step = min(losses, key=losses.get)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == best_step
    best_checkpoint = load_file(tmp_path / "checkpoints" / f"step-{best_step:07d}" / "model.safetensors")
    final = load_file(result.model_dir / "model.safetensors")
    assert all(torch.equal(weight, best_checkpoint[name]) for name, weight in final.items())
    assert result.metrics["validation_loss"] == pytest.approx(losses[best_step], abs=1e-5)
    assert "the best validation loss (`--keep-best`)" in (result.model_dir / "README.md").read_text()


@pytest.mark.parametrize(
    "metric, values, patience, stops_at",
    [("loss", [5.0, 4.0, 4.5, 4.6, 3.0], 2, 4), ("loss", [5.0, 4.0, 3.9, 3.8], 1, None), ("bleu", [1, 3, 2, 3], 2, 4)],
)
def test_early_stopping_counts_evaluations_without_improvement(tmp_path, metric, values, patience, stops_at):
    args = parse_arguments(["--output-dir", str(tmp_path), "--early-stopping", str(patience), "--metric-for-best", metric])
    selection = ModelSelection(replace(args, eval_bleu_steps=0), tokenizer=None, validation_pairs=None)
    state = TrainingState()
    stopped = None
    for step, value in enumerate(values, start=1):
        state.step = step
        state.eval_log.append({"step": step, "loss": 1.0, metric: value})
        if selection.after_step(model=None, state=state, accelerator=None):
            stopped = step
            break
    assert stopped == stops_at


def test_validation_bleu_is_tracked_and_reported_with_its_sacrebleu_signature(tmp_path, pairs_file, tokenizer_dir):
    result = run(tiny_args(tmp_path, pairs_file, tokenizer_dir, "--max-steps", "4", "--eval-steps", "1",
                           "--eval-bleu-steps", "2", "--eval-bleu-examples", "3"))  # fmt: skip
    assert [("bleu" in entry, "chrf" in entry) for entry in result.state.eval_log] == [(False, False), (True, True)] * 2
    signature = result.metrics["bleu_signature"]
    assert signature.startswith("nrefs:1|") and "|case:mixed|eff:no|tok:13a|smooth:exp|version:2." in signature
    saved = json.loads((result.model_dir / "all_results.json").read_text())
    assert saved["bleu_signature"] == signature and saved["bleu_ci95"] == result.metrics["bleu_ci95"]
    # The test score's bootstrap interval, named in the signature; a 4-step model's translations match too few words
    # for sacrebleu to average its resamples, and then no interval is claimed.
    assert ("|bs:1000|seed:12345|" in signature) == (saved["bleu_ci95"] is not None)
    card = (result.model_dir / "README.md").read_text()
    assert signature.replace("|", "\\|") in card  # escaped, so that it stays one cell of the results table
    assert 0 <= result.metrics["looping_translations"] <= result.metrics["translated_examples"]


def test_the_bleu_interval_is_sacrebleus_bootstrap_and_narrows_with_more_sentences():
    references = ["Y dijo Dios: Sea la luz.", "Y fué la luz.", "Y vió Dios que la luz era buena.", "En el principio."]
    hypotheses = ["Y dijo Dios: Sea la luz.", "Y la luz fué.", "Y Dios vió la luz buena.", "Al principio."]
    scores = corpus_scores(hypotheses * 25, references * 25, confidence=True)
    expected = sacrebleu.BLEU().corpus_score(hypotheses * 25, [references * 25], n_bootstrap=1000)
    assert f"{scores['bleu']:.2f} (μ = {scores['bleu_bootstrap_mean']:.2f} ± {scores['bleu_ci95']:.2f})" in str(expected)
    assert scores["bleu_ci95"] > 0 and scores["chrf_ci95"] > 0
    four_times_larger = corpus_scores(hypotheses * 100, references * 100, confidence=True)
    assert four_times_larger["bleu_ci95"] == pytest.approx(scores["bleu_ci95"] / 2, rel=0.3)  # 1 / sqrt(n)
    assert "bleu_ci95" not in corpus_scores(hypotheses, references)  # only when asked: it costs 1000 rescorings
    nothing_matches = corpus_scores(["uno dos"] * 4, references, signatures=True, confidence=True)
    assert nothing_matches["bleu_ci95"] is None and "bs:" not in nothing_matches["bleu_signature"]


@pytest.mark.parametrize(
    "translation, looping",
    [("Y de de de los días.", True), ("y el rey, y el rey, y el rey, dijo", True), ("y de Selelelelel, y de Eth.", True),
     ("Y aconteció en los días de Assuero, y en los días de Assuero", False), ("Y dijo Dios: Sea la luz.", False),
     ("", False)],  # fmt: skip
)
def test_a_translation_loops_when_a_phrase_or_a_syllable_runs_on(translation, looping):
    assert loops(translation) is looping


def test_the_references_of_the_embedded_corpus_almost_never_count_as_loops():
    """The loop count of the test translations means something only if real verses do not count: of the 61,726 verses
    of both languages, one does (Jeremiah 22:29, "O earth, earth, earth, hear Yahweh's word!")."""
    pairs = load_parallel_corpus()
    assert sum(loops(verse) for split in pairs.values() for column in ("en", "es") for verse in split[column]) == 1


def test_keep_best_by_bleu_translates_the_validation_split_at_every_evaluation(tmp_path, pairs_file, tokenizer_dir):
    run(tiny_args(tmp_path, pairs_file, tokenizer_dir, "--max-steps", "2", "--eval-steps", "1", "--keep-best",
                  "--metric-for-best", "bleu", "--eval-bleu-examples", "2"))  # fmt: skip
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    log = json.loads((tmp_path / "training_log.json").read_text())["eval_log"]
    assert best["metric"] == "bleu" and all("bleu" in entry for entry in log)
    assert best["step"] == max(log, key=lambda entry: entry["bleu"])["step"]  # the first of equals: no improvement


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objective", "mlm", "--metric-for-best", "bleu", "--keep-best"], "BLEU .* is for translation"),
        (["--eval-steps", "10", "--eval-bleu-steps", "15"], "must be a multiple of --eval-steps 10"),
        (["--average-last", "2", "--keep-best"], "give one of them"),
        (["--average-last", "3", "--save-total-limit", "3", "--max-steps", "100", "--save-steps", "50"], "writes 2: save"),
        (["--early-stopping", "-1"], "--early-stopping must be 0 .off. or more"),
        (["--tokenizer-sample", "0"], "--tokenizer-sample must be positive"),
    ],
)
def test_bad_recipe_options_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_arguments(argv)


# ----------------------------------------------------------------------------------------------- the README's recipe

REPOSITORY = Path(__file__).parents[1]
DRY_RUN = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64", "--vocab-size", "300",
           "--max-length", "48", "--max-tokens", "400", "--max-steps", "20", "--save-steps", "1", "--eval-steps", "10",
           "--warmup-steps", "2", "--max-eval-examples", "4", "--num-beams", "1", "--tokenizer-sample", "60"]  # fmt: skip


def readme_commands() -> list[list[str]]:
    """The commands of the README's "Reproducing the paper" block, each as an argument list."""
    readme = (REPOSITORY / "README.md").read_text()
    section = readme.split("## Reproducing the paper", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture
def wmt14_from_the_hub(monkeypatch):
    """`wmt/wmt14` `de-en` as the Hub serves it (a `translation` column of {de, en}), from embedded pairs."""
    corpus = load_parallel_corpus()

    def load_dataset(name, config=None, **kwargs):
        assert (name, config) == ("wmt/wmt14", "de-en")
        splits = {"train": corpus["train"].select(range(80)), "validation": corpus["validation"].select(range(12)),
                  "test": corpus["test"].select(range(8))}  # fmt: skip
        return DatasetDict({
            split: Dataset.from_dict({"translation": [{"de": row["es"], "en": row["en"]} for row in rows]})
            for split, rows in splits.items()
        })  # fmt: skip

    monkeypatch.setattr("datasets.load_dataset", load_dataset)


@pytest.mark.slow
def test_the_readmes_wmt14_commands_run_on_cpu_with_tiny_dimensions(tmp_path, wmt14_from_the_hub, capsys):
    """The README's commands as written, with only dimensions, steps and the output folder made tiny: preset,
    Hub data with a `translation` column, token batching, averaging at the end and afterwards, sacreBLEU."""
    train_base, train_big, average = readme_commands()
    for launch, preset in ((train_base, "base"), (train_big, "big")):
        assert launch[:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "8"]
        argv = launch[launch.index("vaswani.training") + 1 :]
        argv[argv.index("--output-dir") + 1] = str(tmp_path / argv[argv.index("--output-dir") + 1])
        assert main([*argv, *DRY_RUN]) == 0
        run_dir = Path(argv[argv.index("--output-dir") + 1])
        saved = json.loads((run_dir / "model" / "training_args.json").read_text())
        assert saved["preset"] == preset and saved["average_last"] == (5 if preset == "base" else 20)
        assert json.loads((run_dir / "model" / "all_results.json").read_text())["bleu_signature"].startswith("nrefs:1|")
    assert "400 tokens x 1 accumulation x 1 processes = up to 400 source + 400 target tokens" in capsys.readouterr().out
    assert average[0] == "vaswani-average-checkpoints"
    average[1] = str(tmp_path / average[1])
    average[average.index("--output") + 1] = str(tmp_path / average[average.index("--output") + 1])
    assert average_main(average[1:]) == 0
    averaged = load_file(Path(average[average.index("--output") + 1]) / "model.safetensors")
    final = load_file(tmp_path / "runs/wmt14-en-de-big/model/model.safetensors")  # --average-last 20 of the same run
    assert all(torch.equal(weight, final[name]) for name, weight in averaged.items())


def test_the_tokenizer_sample_is_n_training_examples_drawn_by_the_seed():
    corpus = load_parallel_corpus()
    sample = tokenizer_training_data(corpus, sample=50, seed=42)
    assert len(sample["train"]) == 50 and len(set(sample["train"]["en"])) == 50
    assert sample["train"]["en"] == tokenizer_training_data(corpus, 50, 42)["train"]["en"]
    assert sample["train"]["en"] != tokenizer_training_data(corpus, 50, 1)["train"]["en"]
    assert sample["validation"] is corpus["validation"]


def test_the_warm_start_pretraining_runs_leave_the_translation_options_out():
    args = parse_arguments(["--eval-bleu-steps", "400", "--keep-best", "--metric-for-best", "bleu", "--pretrain-steps", "7"])
    masked_lm = replace(args, objective="mlm", max_steps=args.pretrain_steps, **PRETRAINING_SELECTION)  # validated again
    assert (masked_lm.keep_best, masked_lm.eval_bleu_steps, masked_lm.average_last) == (False, 0, 0)
