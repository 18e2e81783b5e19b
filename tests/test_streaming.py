"""`--streaming`: the training split read as a stream, tokenized as it is read, a part per process, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, IterableDataset, IterableDatasetDict
from safetensors.torch import load_file
from transformers import AutoTokenizer
from conftest import save_pairs_tokenizer, write_pairs_file
from vaswani.training.arguments import parse_arguments
from vaswani.training.corpus import load_parallel_corpus
from vaswani.training.batching import StreamBatches
from vaswani.training.data import (
    StreamingSplits,
    load_streaming_dataset,
    process_stream,
    stream_encoders,
)  # fmt: skip
from vaswani.training.build import tokenizer_training_data
from vaswani.training.run import run

TINY_RUN = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64", "--vocab-size", "300",
            "--max-length", "48", "--warmup-steps", "2", "--logging-steps", "1", "--max-eval-examples", "4",
            "--num-beams", "1", "--pretrain-steps", "0"]  # fmt: skip
STREAM = ["--streaming", "--validation-examples", "16", "--shuffle-buffer", "16", "--pretrain-steps", "0"]
PAIRS = 80  # in the file: 16 held out for validation, 64 to train on


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_pairs_file(tmp_path_factory.mktemp("data"), PAIRS)


@pytest.fixture(scope="module")
def tokenizer_dir(pairs_file, tmp_path_factory) -> Path:
    return save_pairs_tokenizer(pairs_file, tmp_path_factory.mktemp("tokenizer"))


INVERSE_SQRT = ["--lr-scheduler", "inverse_sqrt"]


def stream_args(output_dir, pairs_file, tokenizer_dir, *extra):
    data = ["--dataset", str(pairs_file), "--tokenizer", str(tokenizer_dir), "--output-dir", str(output_dir)]
    return parse_arguments([*TINY_RUN, *STREAM, *data, *extra])


def english_of(pairs_file: Path) -> list[str]:
    return [json.loads(line)["en"] for line in pairs_file.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- the stream


def test_the_training_split_is_a_stream_and_the_first_examples_are_held_out_for_validation(pairs_file):
    splits = load_streaming_dataset(str(pairs_file), validation_examples=16, text_columns=["en", "es"])
    english = english_of(pairs_file)
    assert isinstance(splits["train"], IterableDataset) and isinstance(splits["validation"], Dataset)
    assert splits["validation"]["en"] == english[:16]
    assert [example["en"] for example in splits["train"]] == english[16:]
    assert splits.sharding == "examples"  # the held-out examples are skipped on the whole stream


def test_the_tokenizer_sample_is_the_first_examples_of_the_training_stream(pairs_file):
    splits = load_streaming_dataset(str(pairs_file), validation_examples=16, text_columns=["en", "es"])
    sample = tokenizer_training_data(splits, sample=10, seed=42)["train"]
    assert isinstance(sample, Dataset) and sample["en"] == english_of(pairs_file)[16:26]


def process_part(splits, tokenizer, args, rank: int, world_size: int) -> list[tuple[int, ...]]:
    """The source ids of one epoch of a process's part of the training stream."""
    stream = process_stream(splits["train"], splits.sharding, rank, world_size, args.seed, args.shuffle_buffer,
                            args.text_columns(), stream_encoders(tokenizer, args.text_columns(), args.max_length))  # fmt: skip
    return [tuple(example["input_ids"]) for example in stream]


@pytest.mark.parametrize("sharding", ["examples", "shards"])
def test_processes_read_disjoint_parts_that_together_are_the_whole_stream(sharding, pairs_file, tokenizer_dir):
    """One file with held-out validation: each process keeps every 2nd example; a stream of 4 shards with a
    validation split of its own (as from the Hub): each process reads 2 whole shards."""
    args = parse_arguments([*STREAM, "--tokenizer", str(tokenizer_dir), "--dataset", str(pairs_file)])
    splits = load_streaming_dataset(str(pairs_file), validation_examples=16, text_columns=["en", "es"])
    if sharding == "shards":
        rows = Dataset.from_list([json.loads(line) for line in pairs_file.read_text().splitlines()])
        splits = StreamingSplits(train=rows.select(range(16, PAIRS)).to_iterable_dataset(num_shards=4),
                                 validation=rows.select(range(16)))  # fmt: skip
        assert splits.sharding == "auto"  # datasets takes shards: 4 is a multiple of 2 processes
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    whole = process_part(splits, tokenizer, args, 0, 1)
    first, second = process_part(splits, tokenizer, args, 0, 2), process_part(splits, tokenizer, args, 1, 2)
    assert len(set(whole)) == len(whole) == PAIRS - 16
    assert not set(first) & set(second) and sorted(first + second) == sorted(whole)
    assert len(first) == len(second)
    held_out = {tuple(ids) for ids in tokenizer(list(splits["validation"]["en"]))["input_ids"]}
    assert not held_out & set(whole)


def test_stream_batches_group_lengths_fit_the_budget_and_repeat_by_epoch():
    lengths = torch.randint(1, 30, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    examples = Dataset.from_dict({"input_ids": [[5] * n for n in lengths]}).to_iterable_dataset()

    def epoch(batches, number, skip=0):
        batches.set_epoch(number)
        batches.skip = skip
        return [[len(example["input_ids"]) for example in batch] for batch in batches]

    by_tokens = StreamBatches(examples.shuffle(seed=0, buffer_size=50), seed=0, pool_size=100, max_tokens=60)
    batches = epoch(by_tokens, 0)
    assert sorted(n for batch in batches for n in batch) == sorted(lengths)  # every example once
    assert all(len(batch) * max(batch) <= 60 for batch in batches)
    assert epoch(by_tokens, 0) == batches and epoch(by_tokens, 1) != batches
    assert epoch(by_tokens, 0, skip=3) == batches[3:]
    by_count = StreamBatches(examples, seed=0, pool_size=64, batch_size=16)
    batches = epoch(by_count, 0)
    assert [len(batch) for batch in batches] == [16] * 12  # 200 examples: the last 8 are dropped
    spread = sum(max(batch) - min(batch) for batch in batches) / len(batches)
    assert spread < 10  # sorted within pools of 64; random batches of 16 spread over ~25 lengths


def test_max_tokens_below_a_streamed_example_says_how_to_fix_it():
    examples = Dataset.from_dict({"input_ids": [[5] * 40, [5] * 3]}).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"smaller than the longest example \(40 tokens.*at least 40"):
        list(StreamBatches(examples, seed=0, pool_size=10, max_tokens=30))


# ----------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "batching",
    [["--batch-size", "8"], ["--max-tokens", "400"],
     ["--objective", "mlm", "--text-column", "en", "--max-length", "96", "--batch-size", "8"]],  # fmt: skip
    ids=["sentences", "tokens", "mlm"],
)
def test_streaming_training_resumes_exactly(batching, tmp_path, pairs_file, tokenizer_dir):
    """N steps == N/2 + resume + N/2: the resumed run reads its epoch again, drops the batches it had trained on
    (not collating them: the mlm masks are drawn as before), and crosses into the next epoch as the first did."""
    # --max-steps 3 stands in for the interruption: the schedule must not depend on it (linear decay would)
    common = [*batching, "--gradient-accumulation-steps", "2", "--save-steps", "3", "--eval-steps", "3",
              "--lr-scheduler", "inverse_sqrt"]  # fmt: skip
    uninterrupted = run(stream_args(tmp_path / "a", pairs_file, tokenizer_dir, *common, "--max-steps", "6"))
    halfway = run(stream_args(tmp_path / "b", pairs_file, tokenizer_dir, *common, "--max-steps", "3"))
    assert halfway.state.batches_in_epoch > 0  # stopped inside an epoch
    resume = ["--max-steps", "6", "--resume", "latest"]
    resumed = run(stream_args(tmp_path / "b", pairs_file, tokenizer_dir, *common, *resume))
    assert resumed.state.epoch > halfway.state.epoch  # 64 pairs: 8 batches of 8 (or ~5 of 400 tokens) an epoch
    losses = [entry["loss"] for entry in uninterrupted.state.train_log]
    assert [entry["loss"] for entry in resumed.state.train_log] == losses
    weights_a = load_file(uninterrupted.model_dir / "model.safetensors")
    weights_b = load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.equal(weight, weights_b[name]) for name, weight in weights_a.items())
    saved = json.loads((tmp_path / "b/checkpoints/step-0000003/training_state.json").read_text())
    assert saved["process_positions"] == [[halfway.state.epoch, halfway.state.batches_in_epoch]]


def test_a_streaming_checkpoint_resumes_only_with_as_many_processes(tmp_path, pairs_file, tokenizer_dir):
    from vaswani.training.checkpoints import write_manifest

    # inverse_sqrt: the resume may then extend --max-steps (a linear schedule is bound to it)
    run(stream_args(tmp_path, pairs_file, tokenizer_dir, "--batch-size", "8", "--max-steps", "1", *INVERSE_SQRT))
    checkpoint = tmp_path / "checkpoints" / "step-0000001"
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["process_positions"] *= 2  # as if saved by two processes
    (checkpoint / "training_state.json").write_text(json.dumps(state))
    (checkpoint / "manifest.json").unlink()
    write_manifest(checkpoint)
    with pytest.raises(ValueError, match="saved by 2 processes, each reading its own part.*as many \\(not 1\\)"):
        run(stream_args(tmp_path, pairs_file, tokenizer_dir, "--batch-size", "8", "--max-steps", "2", "--resume",
                        "latest", *INVERSE_SQRT))  # fmt: skip


WORKER = """
import json, sys
from pathlib import Path
from accelerate import PartialState
from transformers import AutoTokenizer
from vaswani.training.arguments import parse_arguments
from vaswani.training.run import load_run_dataset, tokenize

args = parse_arguments(sys.argv[2:])
process = PartialState(cpu=True)
train = tokenize(load_run_dataset(args), AutoTokenizer.from_pretrained(args.tokenizer), args)["train"]
Path(sys.argv[1], f"rank{process.process_index}.json").write_text(json.dumps([ex["input_ids"] for ex in train]))
"""


@pytest.mark.slow
def test_two_processes_train_on_disjoint_parts_of_the_stream(tmp_path, pairs_file, tokenizer_dir):
    """`torchrun --nproc_per_node 2` (gloo): the run's own data code gives each process its part, the parts are
    disjoint and make the whole stream, and a 2-process streaming run trains and records both processes' places."""
    common = [*TINY_RUN, *STREAM, "--dataset", str(pairs_file), "--tokenizer", str(tokenizer_dir)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "worker.py").write_text(WORKER)
    completed = subprocess.run([*torchrun, str(tmp_path / "worker.py"), str(tmp_path), *common],
                               capture_output=True, text=True, timeout=300, env=environment)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    first, second = ({tuple(ids) for ids in json.loads((tmp_path / f"rank{rank}.json").read_text())} for rank in (0, 1))
    args = parse_arguments([*common])
    splits = load_streaming_dataset(str(pairs_file), validation_examples=16, text_columns=["en", "es"])
    whole = process_part(splits, AutoTokenizer.from_pretrained(tokenizer_dir), args, 0, 1)
    assert first and second and not first & second and first | second == set(whole)

    training = ["-m", "vaswani.training", *common, "--batch-size", "4", "--max-steps", "4", "--save-steps", "4",
                "--output-dir", str(tmp_path / "run")]  # fmt: skip
    completed = subprocess.run([*torchrun, *training], capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    state = json.loads((tmp_path / "run/checkpoints/step-0000004/training_state.json").read_text())
    assert state["process_positions"] == [[0, 4], [0, 4]]  # 32 pairs each: 8 batches of 4 an epoch


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--streaming", "--pretrain-steps", "0"], "give a saved --tokenizer, or --tokenizer-sample N"),
        (["--streaming", "--tokenizer-sample", "9", "--pretrain-steps", "5"], "use --pretrain-steps 0"),
        ([*STREAM, "--tokenizer-sample", "9", "--validation-examples", "0"], "--validation-examples must be positive"),
        ([*STREAM, "--tokenizer-sample", "9", "--shuffle-buffer", "-1"], "--shuffle-buffer must be positive"),
    ],
)
def test_bad_streaming_options_are_named(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_arguments(argv)


def test_a_preset_trains_one_model_from_a_stream():
    args = parse_arguments(["--preset", "base", "--streaming", "--tokenizer-sample", "1000"])
    assert args.streaming and args.pretrain_steps == 0 and args.max_tokens == 25000


PAIR = {"en": "a", "es": "b"}


@pytest.mark.parametrize(
    "rows, columns, strict, message",
    [
        ([PAIR] * 20, ["en", "fr"], False, "has no column fr; its columns are en, es"),
        ([PAIR] * 10, ["en", "es"], False, "has 10 training examples, too few to hold out"),
        ([PAIR] * 20 + [{"en": "a", "es": 7}], ["en", "es"], False, r"jsonl \(train split\) example 21: es holds 7"),
        ([PAIR] * 20 + [{"en": " ", "es": "b"}], ["en", "es"], True, "example 21: en is missing or blank"),
    ],
)
def test_bad_streamed_data_is_named_by_its_example(tmp_path, rows, columns, strict, message):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=message):
        splits = load_streaming_dataset(str(path), validation_examples=16, text_columns=columns, strict=strict)
        list(splits["train"])


def test_rows_without_text_are_left_out_of_the_stream(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"en": f"e{i}", "es": f"s{i}"} for i in range(20)] + [{"en": "", "es": "x"}, {"en": "y", "es": None}]
    path.write_text("".join(json.dumps(row) + "\n" for row in [*rows, {"en": "last", "es": "z"}]))
    splits = load_streaming_dataset(str(path), validation_examples=16, text_columns=["en", "es"])
    assert [row["en"] for row in splits["train"]] == ["e16", "e17", "e18", "e19", "last"]


def test_a_hub_dataset_streams_with_its_own_splits_and_a_translation_column(tmp_path, monkeypatch, tokenizer_dir):
    """As `wmt/wmt14` streams from the Hub: an IterableDatasetDict in shards, pairs in one `translation` column, its
    own validation and test splits (kept whole, nothing held out of the training stream)."""
    corpus = load_parallel_corpus()

    def load_dataset(name, config=None, streaming=False, **kwargs):
        assert (name, config, streaming) == ("wmt/wmt14", "de-en", True)
        splits = {"train": range(64), "validation": range(64, 72), "test": range(72, 78)}
        return IterableDatasetDict({
            split: Dataset.from_dict({"translation": [{"de": corpus["train"][i]["es"], "en": corpus["train"][i]["en"]}
                                                      for i in rows]}).to_iterable_dataset(num_shards=4)
            for split, rows in splits.items()
        })  # fmt: skip

    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    columns = ["translation.en", "translation.de"]
    splits = load_streaming_dataset("wmt/wmt14", "de-en", validation_examples=16, text_columns=columns)
    assert splits.sharding == "auto" and len(splits["validation"]) == 8 and len(splits["test"]) == 6
    assert len(list(splits["train"])) == 64
    data = ["--dataset", "wmt/wmt14", "--dataset-config", "de-en", "--source-column", columns[0], "--target-column",
            columns[1], "--tokenizer", str(tokenizer_dir), "--output-dir", str(tmp_path), "--max-steps", "2"]  # fmt: skip
    result = run(parse_arguments([*TINY_RUN, *STREAM, *data, "--max-eval-examples", "10"]))
    assert result.metrics["translated_examples"] == 6  # the whole test split (validation has 8)
