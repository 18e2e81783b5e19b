"""The training package: arguments, data, collators, schedule, the loop (resume, processes), export, the CLI."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_pairs_file
from vaswani import VaswaniConfig, VaswaniForCausalLM, VaswaniForMaskedLM, train_tokenizer
from vaswani.configuration.errors import InputError
from vaswani.training.__main__ import main
from vaswani.training.arguments import TrainArguments, parse_arguments
from vaswani.training.build import MODEL_CLASSES, build_model, warm_start
from vaswani.training.checkpoints import LATEST, TrainingState, resolve_resume
from vaswani.training.data import build_collator, load_raw_dataset, tokenize_blocks, tokenize_pairs
from vaswani.training.loop import build_optimizer_and_scheduler, recipe_loss
from vaswani.training.export import save_for_hub
from vaswani.training.run import RunResult, data_description, run, training_description

REPOSITORY = Path(__file__).parents[1]
TINY_MODEL = "--d-model 32 --layers 1 --heads 2 --ffn-dim 64 --vocab-size 300 --max-length 48".split()
TINY_RUN = [*TINY_MODEL, "--batch-size", "8", "--warmup-steps", "2", "--logging-steps", "1", "--max-eval-examples", "4",
            "--num-beams", "1", "--pretrain-steps", "0", "--validation-fraction", "0.2"]  # fmt: skip


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """80 real English-Spanish pairs as a local JSON-lines dataset (no test split: validation is evaluated)."""
    return write_pairs_file(tmp_path_factory.mktemp("data"), 80)


@pytest.fixture(scope="module")
def text_file(pairs_file) -> Path:
    path = pairs_file.with_name("english.txt")
    path.write_text("".join(json.loads(line)["en"] + "\n" for line in pairs_file.read_text().splitlines()))
    return path


@pytest.fixture(scope="module")
def tokenizer(pairs_file):
    texts = [text for line in pairs_file.read_text().splitlines() for text in json.loads(line).values()]
    return train_tokenizer(texts, vocab_size=300, model_max_length=48, show_progress=False)


def tiny_args(tmp_path, *extra) -> TrainArguments:
    return parse_arguments([*TINY_RUN, "--output-dir", str(tmp_path), *extra])


# ----------------------------------------------------------------------------------------------- arguments


def test_defaults_are_the_main_job_one_translation_model_in_token_batches():
    args = parse_arguments([])
    assert (args.objective, args.dataset, args.label_smoothing, args.lr_scheduler) == (
        "seq2seq", "bible-en-es", 0.1, "linear"
    )
    assert (args.max_tokens, args.batch_size, args.dropout, args.max_length) == (2048, None, 0.0, 128)
    assert not args.compares_warm_start() and parse_arguments(["--pretrain-steps", "5"]).compares_warm_start()
    assert parse_arguments(["--objective", "mlm"]).dataset == "bible-en"
    assert parse_arguments(["--objective", "clm"]).label_smoothing == 0.0


def test_a_batch_is_sized_by_tokens_or_by_examples_never_both():
    assert (parse_arguments(["--batch-size", "8"]).max_tokens, TrainArguments(batch_size=8).max_tokens) == (None, None)
    assert parse_arguments(["--max-tokens", "900"]).max_tokens == 900
    with pytest.raises(InputError, match="--batch-size and --max-tokens are two ways to size a batch"):
        parse_arguments(["--batch-size", "8", "--max-tokens", "900"])
    with pytest.raises(InputError, match="--batch-size must be positive"):
        parse_arguments(["--batch-size", "0"])
    # A preset's token batches give way to an explicit --batch-size
    assert parse_arguments(["--preset", "base", "--batch-size", "8"]).max_tokens is None


def test_learning_rate_is_the_given_peak_or_the_papers_for_zero():
    assert TrainArguments().peak_learning_rate() == 4e-3
    assert TrainArguments(d_model=512, warmup_steps=4000, learning_rate=0).peak_learning_rate() == pytest.approx(
        512**-0.5 * 4000**-0.5
    )


def test_model_card_names_the_embedded_corpus_and_its_licences(tmp_path, tokenizer):
    """The embedded corpus gets a "Data and licence" section; other data gets none (its card cannot know)."""
    args = TrainArguments(d_model=32, layers=1, heads=2, ffn_dim=64)
    assert "public domain" in data_description(args.dataset) and "Reina-Valera 1909" in data_description(args.dataset)
    assert data_description("my_pairs.jsonl") is None
    model = build_model(args, tokenizer)
    save_for_hub(model, tokenizer, tmp_path, card={"data": data_description(args.dataset)})
    card = (tmp_path / "README.md").read_text()
    assert "## Data and licence" in card and "World English Bible" in card
    save_for_hub(model, tokenizer, tmp_path / "other", card={})
    assert "## Data and licence" not in (tmp_path / "other" / "README.md").read_text()


def test_model_card_says_where_the_schedule_ends():
    def described(args: TrainArguments) -> str:
        return training_description(args, RunResult(args, Path("model"), {}, [], TrainingState(step=2400), 690.0))

    linear = described(TrainArguments())
    assert "linear schedule peaking at 4.00e-03 after 200 warm-up steps (down to 0 at the last step)" in linear
    assert "2400 steps of 2048 tokens" in linear and "11.5 minutes in all" in linear
    assert "down to 0" not in described(TrainArguments(lr_scheduler="inverse_sqrt"))


def test_unknown_objective_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--objective", "mt"])
    assert "invalid choice: 'mt'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- schedule


def test_the_default_schedule_warms_up_then_decays_linearly_to_zero_at_the_last_step():
    args = TrainArguments(max_steps=400, warmup_steps=100)
    optimizer, scheduler = build_optimizer_and_scheduler(
        torch.nn.Linear(2, 2), args.peak_learning_rate(), 0.0, args.lr_scheduler, args.warmup_steps, args.max_steps
    )
    learning_rates = {}
    for step in range(1, 401):
        optimizer.step()
        scheduler.step()
        learning_rates[step] = scheduler.get_last_lr()[0]
    peak = args.learning_rate
    assert [learning_rates[step] / peak for step in (50, 100, 250, 400)] == pytest.approx([0.5, 1.0, 0.5, 0.0])


def test_schedule_and_optimiser_follow_the_paper():
    """lrate = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (§5.3), with Adam(0.9, 0.98, 1e-9)."""
    args = TrainArguments(d_model=512, warmup_steps=4000, max_steps=100_000, learning_rate=0, lr_scheduler="inverse_sqrt")
    optimizer, scheduler = build_optimizer_and_scheduler(
        torch.nn.Linear(2, 2), args.peak_learning_rate(), 0.0, args.lr_scheduler, args.warmup_steps, args.max_steps
    )
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9
    learning_rates = {}
    for step in range(1, 20_001):
        optimizer.step()
        scheduler.step()
        learning_rates[step] = scheduler.get_last_lr()[0]
    for step in (1, 100, 3999, 4000, 4001, 20_000):
        paper = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert learning_rates[step] == pytest.approx(paper, rel=1e-9), step


# ----------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_of_each_format_load_with_a_validation_split(pairs_file, tmp_path, suffix):
    import datasets

    table = datasets.load_dataset("json", data_files=str(pairs_file))["train"]
    path = tmp_path / f"pairs{suffix}"
    {".jsonl": table.to_json, ".csv": table.to_csv, ".parquet": table.to_parquet}[suffix](str(path))
    dataset = load_raw_dataset(str(path), validation_fraction=0.25)
    assert len(dataset["train"]) == 60 and len(dataset["validation"]) == 20
    assert dataset["train"].column_names == ["en", "es"]


def test_a_folder_of_text_files_loads_line_by_line(text_file, tmp_path):
    (tmp_path / "a.txt").write_text(text_file.read_text())
    (tmp_path / "b.txt").write_text("one more line\n")
    dataset = load_raw_dataset(str(tmp_path), validation_fraction=0.5)
    assert len(dataset["train"]) + len(dataset["validation"]) == 81 and dataset["train"].column_names == ["text"]


def test_data_errors_are_named(tmp_path, pairs_file):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("x\n")
    (tmp_path / "mixed" / "b.csv").write_text("x\n1\n")
    with pytest.raises(ValueError, match="mixes file formats"):
        load_raw_dataset(str(tmp_path / "mixed"))
    (tmp_path / "broken.jsonl").write_text('{"en": "unterminated\n')
    with pytest.raises(ValueError, match="Could not read .*broken.jsonl"):
        load_raw_dataset(str(tmp_path / "broken.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no readable data file"):
        load_raw_dataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="The dataset has no column fr; its columns are en, es"):
        tokenize_pairs(load_raw_dataset(str(pairs_file)), None, "en", "fr", 16)


def test_a_missing_dataset_names_both_places_it_looked(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="Could not load dataset 'nobody/no-such-data': no such local file"):
        load_raw_dataset("nobody/no-such-data")


def test_pairs_become_source_ids_and_labels_ending_in_eos(pairs_file, tokenizer):
    tokenized = tokenize_pairs(load_raw_dataset(str(pairs_file)), tokenizer, "en", "es", max_length=16)
    example = tokenized["train"][0]
    assert example["labels"][-1] == tokenizer.eos_token_id and example["input_ids"][-1] == tokenizer.eos_token_id
    assert max(len(ids) for ids in tokenized["train"]["input_ids"]) <= 16


def test_text_is_grouped_into_full_blocks(text_file, tokenizer):
    blocks = tokenize_blocks(load_raw_dataset(str(text_file)), tokenizer, "text", block_size=32)["train"]
    assert len(blocks) > 10 and all(len(ids) == 32 for ids in blocks["input_ids"])
    assert tokenizer.eos_token_id in [token for ids in blocks["input_ids"] for token in ids]  # verse separators


# ----------------------------------------------------------------------------------------------- collators


def test_seq2seq_collator_pads_labels_with_minus_100_and_builds_decoder_inputs(tokenizer):
    model = build_model(TrainArguments(d_model=32, layers=1, heads=2, ffn_dim=64), tokenizer)
    collator = build_collator("seq2seq", tokenizer, model)
    batch = collator([{"input_ids": [10, 11, 2], "labels": [20, 2]}, {"input_ids": [12, 2], "labels": [21, 22, 23, 2]}])
    assert batch["labels"].tolist() == [[20, 2, -100, -100], [21, 22, 23, 2]]
    assert batch["decoder_input_ids"].tolist() == [[1, 20, 2, 0], [1, 21, 22, 23]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_mlm_collator_masks_15_percent_80_10_10_and_never_special_tokens(tokenizer):
    torch.manual_seed(0)
    collator = build_collator("mlm", tokenizer)
    original = torch.randint(5, 300, (64, 128))
    original[:, -1] = tokenizer.eos_token_id
    batch = collator([{"input_ids": ids.tolist()} for ids in original])
    selected = batch["labels"] != -100
    assert 0.13 < selected.float().mean() < 0.17
    assert not selected[:, -1].any()  # </s> is never a target
    masked = batch["input_ids"][selected] == tokenizer.mask_token_id
    kept = batch["input_ids"][selected] == original[selected]
    assert 0.77 < masked.float().mean() < 0.83 and 0.07 < kept.float().mean() < 0.13
    assert torch.equal(batch["labels"][selected], original[selected])


def test_clm_collator_labels_are_the_inputs():
    from vaswani.tokenization import causal_lm_tokenizer

    tokenizer = causal_lm_tokenizer(train_tokenizer(["a b c"] * 10, vocab_size=270, show_progress=False))
    batch = build_collator("clm", tokenizer)([{"input_ids": [1, 7, 8, 2]}, {"input_ids": [1, 9, 2]}])
    assert batch["input_ids"].tolist() == [[1, 7, 8, 2], [0, 1, 9, 2]]  # left padding, as generation wants
    assert batch["labels"].tolist() == [[1, 7, 8, 2], [-100, 1, 9, 2]]


# ----------------------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize("objective", ["seq2seq", "mlm", "clm"])
def test_one_run_per_objective_trains_evaluates_and_exports(objective, tmp_path, pairs_file, text_file):
    dataset = pairs_file if objective == "seq2seq" else text_file
    result = run(tiny_args(tmp_path, "--objective", objective, "--dataset", str(dataset), "--max-steps", "3"))
    assert result.state.step == 3 and len(result.state.train_log) == 3
    expected = {"bleu", "chrf"} if objective == "seq2seq" else {"loss", "perplexity"}
    assert expected <= result.metrics.keys()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "modeling_vaswani.py"):
        assert (result.model_dir / name).exists(), name
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000
    assert (tmp_path / "checkpoints" / LATEST).read_text() == "step-0000003"
    assert_plain_cross_entropy_when_downloaded(result.model_dir, objective)


def assert_plain_cross_entropy_when_downloaded(model_dir: Path, objective: str) -> None:
    """Smoothing is the recipe's: the export says 0.0, and whoever fine-tunes it gets plain cross-entropy."""
    assert json.loads((model_dir / "config.json").read_text())["label_smoothing"] == 0.0
    model = MODEL_CLASSES[objective].from_pretrained(model_dir).train()
    ids = torch.randint(5, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    outputs = model(input_ids=ids, labels=ids, skip_logits=False)
    logits, labels = (outputs.logits[:, :-1], ids[:, 1:]) if objective == "clm" else (outputs.logits, ids)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(outputs.loss, expected)


@pytest.mark.parametrize("objective", ["seq2seq", "mlm", "clm"])
def test_the_loop_applies_the_recipes_label_smoothing_to_the_models_logits(objective):
    torch.manual_seed(0)
    config = VaswaniConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0)  # fmt: skip
    model = MODEL_CLASSES[objective](config).train()
    ids = torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, -2:] = -100
    batch = {"input_ids": ids, "labels": labels}
    if objective == "seq2seq":
        batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels)
    items = (labels != -100).sum() - (2 if objective == "clm" else 0)  # a causal LM predicts no token after the last
    smoothed = recipe_loss(model, batch, items, 0.1)
    logits = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
    logits, targets = (logits[:, :-1], labels[:, 1:]) if objective == "clm" else (logits, labels)
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100, label_smoothing=0.1, reduction="sum"
    ) / items
    torch.testing.assert_close(smoothed, expected)
    plain = recipe_loss(model, batch, items, 0.0)  # the model's own loss: plain cross-entropy
    assert not torch.allclose(plain, smoothed) and model.config.label_smoothing == 0.0


def test_resumed_training_equals_uninterrupted_training(tmp_path, pairs_file, tokenizer):
    """N steps == resume from the checkpoint the run saved at N/2 (as after a kill) + N/2 steps: same data order,
    dropout masks, optimiser and schedule, and the same log (the loss logged at step 4 averages steps 3 and 4
    although the run resumed after step 3)."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    common = ["--dataset", str(pairs_file), "--tokenizer", str(tmp_path / "tokenizer"), "--save-steps", "3",
              "--logging-steps", "2"]  # fmt: skip
    uninterrupted = run(tiny_args(tmp_path / "a", *common, "--max-steps", "6"))
    midway = tmp_path / "a" / "checkpoints" / "step-0000003"
    after_kill = run(tiny_args(tmp_path / "c", *common, "--max-steps", "6", "--resume", str(midway)))
    assert [entry["step"] for entry in after_kill.state.train_log] == [2, 4, 6]
    assert after_kill.state.train_log == uninterrupted.state.train_log
    weights_a = load_file(uninterrupted.model_dir / "model.safetensors")
    weights_b = load_file(after_kill.model_dir / "model.safetensors")
    for name, weight in weights_a.items():
        assert torch.equal(weight, weights_b[name]), name


def test_an_interrupted_save_leaves_the_latest_checkpoint_intact(tmp_path, pairs_file):
    run(tiny_args(tmp_path, "--dataset", str(pairs_file), "--max-steps", "2", "--save-steps", "1"))
    root = tmp_path / "checkpoints"
    assert sorted(path.name for path in root.iterdir()) == [LATEST, "step-0000001", "step-0000002"]
    (root / ".step-0000003.tmp").mkdir()  # a save killed before its rename: never named by `latest`
    (root / ".step-0000003.tmp" / "optimizer.bin").write_bytes(b"truncated")
    assert resolve_resume("latest", tmp_path) == root / "step-0000002"
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        resolve_resume(str(root / ".step-0000003.tmp"), tmp_path)


def test_checkpoints_beyond_the_limit_are_pruned(tmp_path, pairs_file):
    run(tiny_args(tmp_path, "--dataset", str(pairs_file), "--max-steps", "4", "--save-steps", "1", "--save-total-limit", "2"))
    assert sorted(path.name for path in (tmp_path / "checkpoints").glob("step-*")) == ["step-0000003", "step-0000004"]


@pytest.mark.slow
def test_two_processes_with_half_batches_equal_one_process(tmp_path, pairs_file, tokenizer):
    """`torchrun --nproc_per_node 2` on CPU (gloo), batch 4 per process == 1 process with batch 8.

    Tolerance: 1e-4 on every parameter after 4 Adam steps (measured: ~3e-6, the all-reduce sums in another order).
    Dropout is off: each process draws its own masks, by design.
    """
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    common = [*TINY_RUN, "--dataset", str(pairs_file), "--tokenizer", str(tmp_path / "tokenizer"), "--dropout", "0",
              "--max-steps", "4", "--eval-steps", "100"]  # fmt: skip
    assert main([*common, "--output-dir", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "vaswani.training"]
    completed = subprocess.run(
        [*torchrun, *common, "--output-dir", str(tmp_path / "two"), "--batch-size", "4"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for name, weight in one.items():
        torch.testing.assert_close(two[name], weight, atol=1e-4, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------- warm start


def test_warm_start_takes_the_encoder_from_mlm_and_the_decoder_from_clm(tmp_path, tokenizer):
    args = TrainArguments(d_model=32, layers=1, heads=2, ffn_dim=64)
    masked_lm = build_model(replace(args, objective="mlm"), tokenizer)
    causal_lm = build_model(replace(args, objective="clm"), tokenizer)
    masked_lm.save_pretrained(tmp_path / "mlm")
    causal_lm.save_pretrained(tmp_path / "clm")
    model = warm_start(str(tmp_path / "mlm"), str(tmp_path / "clm"))
    for name, weight in masked_lm.model.encoder.layers.state_dict().items():
        assert torch.equal(model.model.encoder.layers.state_dict()[name], weight), name
    for name, weight in causal_lm.model.decoder.layers.state_dict().items():
        assert torch.equal(model.model.decoder.layers.state_dict()[name], weight), name
    assert torch.equal(model.model.shared.weight, causal_lm.model.shared.weight)  # tied to the target-side output


def test_warm_start_refuses_stacks_of_different_shapes(tmp_path, tokenizer):
    args = TrainArguments(d_model=32, layers=1, heads=2, ffn_dim=64)
    build_model(replace(args, objective="mlm"), tokenizer).save_pretrained(tmp_path / "mlm")
    build_model(replace(args, objective="clm", ffn_dim=128), tokenizer).save_pretrained(tmp_path / "clm")
    with pytest.raises(ValueError, match="another architecture than the encoder checkpoint: decoder_ffn_dim 128 vs 64"):
        warm_start(str(tmp_path / "mlm"), str(tmp_path / "clm"))


# ----------------------------------------------------------------------------------------------- the CLI


def test_pretrain_steps_compare_warm_start_on_a_tiny_budget(tmp_path, pairs_file, capsys):
    argv = [*TINY_RUN, "--dataset", str(pairs_file), "--output-dir", str(tmp_path), "--max-steps", "2",
            "--pretrain-steps", "2"]  # fmt: skip
    assert main(argv) == 0
    comparison = json.loads((tmp_path / "warm_start_comparison.json").read_text())
    assert {"bleu", "chrf"} <= comparison["from-scratch"].keys() and {"bleu", "chrf"} <= comparison["warm-started"].keys()
    for folder in ("encoder-mlm", "decoder-clm", "from-scratch", "warm-started", "model", "tokenizer"):
        assert (tmp_path / folder).is_dir(), folder
    assert VaswaniForMaskedLM.from_pretrained(tmp_path / "encoder-mlm" / "model")
    assert VaswaniForCausalLM.from_pretrained(tmp_path / "decoder-clm" / "model")
    printed = capsys.readouterr().out
    assert "bleu:" in printed and "translation:" in printed and "warm-started  BLEU" in printed
    assert comparison["minutes"]["total"] >= comparison["minutes"]["from-scratch"] > 0


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    for option in ("--objective", "--output-dir", "--max-steps", "--dataset", "--tokenizer", "--init-encoder",
                   "--init-decoder", "--resume", "--pretrain-steps", "--push-to-hub"):  # fmt: skip
        assert option in printed, option
    assert "usage: vaswani-train" in printed


@pytest.mark.parametrize("config_file", sorted((REPOSITORY / "training" / "accelerate_configs").glob("*.yaml")))
def test_shipped_accelerate_configs_parse(config_file):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(config_file))
    assert config.distributed_type.name in {"MULTI_GPU", "FSDP", "DEEPSPEED"}
