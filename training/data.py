"""Data for training: load a dataset (embedded, Hub or local files), check it, tokenize it, batch it.

Bad data gets a message that names the file and the row (local files are read and checked by
`vaswani.tokenization.data_files`, which `vaswani-tokenizer` shares), never a pyarrow, pandas or tokenizers traceback.

Pure functions over `datasets` (no Accelerator here). Tokenization runs through `Dataset.map(batched=True)`,
which caches its results next to file-backed datasets. With `--streaming` the training split is a
`datasets.IterableDataset` instead, tokenized as it is read (`load_streaming_dataset`, `process_stream`,
`training/batching.py`'s `StreamBatches`). Batches come from transformers' collators:
`DataCollatorForSeq2Seq` (pads labels with -100 and builds decoder inputs from them) and
`DataCollatorForLanguageModeling` (BERT's 15% masking, 80/10/10, for mlm; labels = inputs for clm).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from vaswani.configuration.errors import InputError
from vaswani.tokenization.data_files import data_files, read_data_file, row_has_text, usable_rows
from vaswani.training.corpus import load_english_corpus, load_parallel_corpus

EMBEDDED_DATASETS = {"bible-en-es": load_parallel_corpus, "bible-en": load_english_corpus}
MLM_PROBABILITY = 0.15  # BERT's masking rate


def load_raw_dataset(
    name: str,
    config: str | None = None,
    validation_fraction: float = 0.01,
    seed: int = 42,
    text_columns: list[str] | None = None,
    strict: bool = False,
):
    """The named dataset as a DatasetDict with `train` and `validation` (and `test` when it has one), without the
    rows whose `text_columns` hold no text (or, with `strict`, an error at the first such row)."""
    if name in EMBEDDED_DATASETS:
        return EMBEDDED_DATASETS[name]()
    path = Path(name)
    if path.exists():
        dataset = load_local_files(path, text_columns or [], strict)
    else:
        hub = load_hub_dataset(name, config)
        columns = text_columns or []
        dataset = DatasetDict(
            {split: usable_rows(rows, columns, f"{name} ({split} split)", strict) for split, rows in hub.items()}
        )
    return with_validation_split(dataset, validation_fraction, seed)


def load_hub_dataset(name: str, config: str | None) -> DatasetDict:
    try:
        # WMT and OPUS datasets hold a pair in one `translation` column of {language: text}: flattened, its texts are
        # the columns `translation.en`, `translation.de` (--source-column translation.en).
        return datasets.load_dataset(name, config).flatten()
    except Exception as error:  # datasets raises many types; the user needs the name and the cause
        raise InputError(
            f"Could not load dataset {name!r}: no such local file or folder, and the Hub said: {error}"
        ) from error


def load_local_files(path: Path, text_columns: list[str] | None = None, strict: bool = False) -> DatasetDict:
    """Text (one example per line), JSON/JSON-lines, CSV or Parquet files, maybe compressed; a folder holds files
    of one format. Each file is read on its own, so that a bad row is named by its file and row number."""
    files, file_format = data_files(path)
    parts = [usable_rows(read_data_file(file, file_format), text_columns or [], str(file), strict) for file in files]
    try:
        train = datasets.concatenate_datasets([part.cast(parts[0].features) for part in parts])
    except (ValueError, TypeError) as error:  # arrow cannot align the files' columns
        raise InputError(f"The files of {path} do not share their columns and types: {error}") from error
    return DatasetDict({"train": train})


def with_validation_split(dataset: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """Hold out `fraction` of train as validation when the dataset has no validation split of its own."""
    if "validation" in dataset:
        return dataset
    check_not_empty(dataset["train"], "train")
    if not 0 < fraction < 1 or len(dataset["train"]) < 2:
        raise InputError(f"Cannot hold out a validation fraction of {fraction} from {len(dataset['train'])} examples.")
    split = dataset["train"].train_test_split(test_size=fraction, seed=seed)
    return DatasetDict({**dataset, "train": split["train"], "validation": split["test"]})


def check_columns(dataset: DatasetDict, columns: list[str]) -> None:
    available = first_split(dataset).column_names
    missing = [column for column in columns if column not in available]
    if missing:
        raise InputError(f"The dataset has no column {', '.join(missing)}; its columns are {', '.join(available)}.")


def first_split(dataset: DatasetDict) -> Dataset:
    """`train`, or with --streaming (whose training stream is tokenized apart) the first in-memory split."""
    return dataset["train"] if "train" in dataset else next(iter(dataset.values()))


def check_not_empty(dataset: Dataset, split: str) -> None:
    if len(dataset) == 0:
        raise InputError(f"The {split} split of the dataset is empty.")


def rows_with_text(dataset: DatasetDict, columns: list[str]) -> DatasetDict:
    """Every split without its rows that hold no text (already gone when `load_raw_dataset` was given the columns):
    tokenizers would fail on a null with a bare TypeError."""
    return DatasetDict(
        {split: usable_rows(rows, columns, f"The {split} split", False) for split, rows in dataset.items()}
    )


def tokenize_pairs(dataset: DatasetDict, tokenizer, source: str, target: str, max_length: int) -> DatasetDict:
    """Source ids as `input_ids` and target ids as `labels` (`A </s>`), both truncated to `max_length`."""
    check_columns(dataset, [source, target])
    dataset = rows_with_text(dataset, [source, target])
    encode = pair_encoder(tokenizer, source, target, max_length)
    columns = first_split(dataset).column_names
    return dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing pairs")


def pair_encoder(tokenizer, source: str, target: str, max_length: int):
    def encode(batch):
        return tokenizer(batch[source], text_target=batch[target], max_length=max_length, truncation=True)

    return encode


def tokenize_blocks(dataset: DatasetDict, tokenizer, column: str, block_size: int) -> DatasetDict:
    """Texts concatenated and cut into blocks of `block_size` tokens (the tail that fills no block is dropped)."""
    check_columns(dataset, [column])
    dataset = rows_with_text(dataset, [column])
    encode, group = block_encoder(tokenizer, column, block_size)
    columns = first_split(dataset).column_names
    encoded = dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing text")
    return encoded.map(group, batched=True, batch_size=1000, desc=f"Grouping into blocks of {block_size}")


def block_encoder(tokenizer, column: str, block_size: int):
    """The two maps of `tokenize_blocks`: texts to ids, then ids of 1000 texts concatenated and cut into blocks."""

    def encode(batch):
        return {"input_ids": tokenizer(batch[column])["input_ids"]}

    def group(batch):
        tokens = [token for ids in batch["input_ids"] for token in ids]
        blocks = [tokens[start : start + block_size] for start in range(0, len(tokens) - block_size + 1, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}

    return encode, group


def build_collator(objective: str, tokenizer: PreTrainedTokenizerBase, model=None):
    if objective == "seq2seq":
        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    return DataCollatorForLanguageModeling(tokenizer, mlm=objective == "mlm", mlm_probability=MLM_PROBABILITY)


# ----------------------------------------------------------------------------------------------- streaming
#
# `--streaming`: the training split is read as training goes (`load_dataset(..., streaming=True)`), never copied to
# disk or into memory; the validation and test splits are read into memory (evaluation needs their length, and they
# are small: WMT14's are 3000 sentences). Each process reads its own part of the stream (`process_stream`:
# datasets' `split_dataset_by_node`, whole files to each process when their number allows, else every P-th example),
# rather than Accelerate's dispatching, where the first process would read and tokenize for all and send the
# batches over. A resume is exact because the stream of each epoch is a function of (seed, epoch): the resumed
# process reads its epoch again and drops the batches it had taken before collating them (`StreamBatches.skip`),
# which costs one read of the part already trained on. datasets' own `state_dict` would resume without re-reading,
# but it does not restore the shuffle buffer, so the examples that were in it would be lost to that epoch.


class StreamingSplits(dict):
    """`train` a `datasets.IterableDataset`, `validation` (and `test`) in memory; `sharding` is the
    `split_dataset_by_node` strategy that keeps the held-out validation examples out of every process's stream."""

    sharding = "auto"


@contextmanager
def stream_errors(origin: str) -> Iterator[None]:
    """Reading a stream, a file's bad row (pyarrow's JSON or CSV parser, a codec) surfaces only when the stream
    reaches it, from inside datasets: it becomes our error, naming the data and what the parser met there."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:  # pyarrow, pandas, the codecs and datasets raise many types
        inner = error
        while inner.__cause__ or inner.__context__:
            inner = inner.__cause__ or inner.__context__
        raise InputError(
            f"{origin} cannot be read as a stream: {type(inner).__name__}: {str(inner)[:300]}. Fix the data (reading "
            "it without --streaming names the file and line)."
        ) from error


def load_streaming_dataset(
    name: str,
    config: str | None = None,
    validation_examples: int = 1000,
    text_columns: list[str] | None = None,
    strict: bool = False,
) -> StreamingSplits:
    """The named dataset with its training split as a stream, its rows without text left out as they are read.

    Without a validation split of its own (local files never have one), the first `validation_examples` examples
    are the validation split and the stream skips them. That skip is only right on the whole stream: datasets would
    divide it among the shards that processes read, so each process then reads the whole stream and keeps every
    P-th example. With a validation split of its own, processes read whole shards each when their number allows."""
    with stream_errors(f"--dataset {name}"):
        return streaming_splits(name, config, validation_examples, text_columns or [], strict)


def streaming_splits(name: str, config: str | None, validation_examples: int, columns: list[str], strict: bool):
    streams = StreamingSplits()
    for split, rows in stream_splits(name, config).items():
        origin = f"{name} ({split} split)"
        if split != "train":
            rows = rows if isinstance(rows, Dataset) else Dataset.from_list(list(rows))
            streams[split] = usable_rows(rows, columns, origin, strict)
            continue
        check_stream_columns(rows, columns, origin)
        streams[split] = stream_rows_with_text(rows, columns, origin, strict)
    if "validation" not in streams:
        held_out = list(streams["train"].take(validation_examples))
        if len(held_out) < validation_examples:
            raise InputError(
                f"{name} has {len(held_out)} training examples, too few to hold out --validation-examples "
                f"{validation_examples} and train on the rest."
            )
        streams["validation"] = Dataset.from_list(held_out)
        streams["train"] = streams["train"].skip(validation_examples)
        streams.sharding = "examples"
    return streams


def stream_splits(name: str, config: str | None) -> dict:
    if name in EMBEDDED_DATASETS:
        splits = EMBEDDED_DATASETS[name]()
        # In 8 shards, so that up to 8 processes (any divisor of 8) each read whole shards of their own.
        return {**splits, "train": splits["train"].to_iterable_dataset(num_shards=8)}
    path = Path(name)
    if path.exists():
        files, file_format = data_files(path)
        shards = [str(file) for file in files]  # one shard per file
        return {"train": datasets.load_dataset(file_format, data_files=shards, split="train", streaming=True)}
    try:
        hub = datasets.load_dataset(name, config, streaming=True)
    except Exception as error:  # datasets raises many types; the user needs the name and the cause
        raise InputError(
            f"Could not stream dataset {name!r}: no such local file or folder, and the Hub said: {error}"
        ) from error
    return {split: rows.map(flattened) for split, rows in hub.items()}


def flattened(example: dict) -> dict:
    """A `translation` column of {language: text} as columns `translation.en`, ... (`Dataset.flatten`'s names; an
    IterableDataset has no `flatten`)."""
    return {f"{name}.{key}": value for name, inner in example.items() if isinstance(inner, dict)
            for key, value in inner.items()}  # fmt: skip


def check_stream_columns(stream: IterableDataset, columns: list[str], origin: str) -> None:
    """The columns, checked on the first example (a stream's columns may be known only once it is read)."""
    first = next(iter(stream.take(1)), None)
    if first is None:
        raise InputError(f"{origin} is empty.")
    if missing := [column for column in columns if column not in first]:
        raise InputError(f"The dataset has no column {', '.join(missing)}; its columns are {', '.join(first)}.")


def stream_rows_with_text(stream: IterableDataset, columns: list[str], origin: str, strict: bool) -> IterableDataset:
    """`usable_rows` for a stream: rows without text are left out as they are read (they cannot be counted before)."""

    def has_text(example: dict, index: int) -> bool:
        values = [example.get(column) for column in columns]
        return row_has_text(values, columns, f"{origin} example {index + 1}", strict)

    return stream.filter(has_text, with_indices=True)


def process_stream(
    stream: IterableDataset, sharding: str, rank: int, world_size: int, seed: int, shuffle_buffer: int,
    columns: list[str], encode: list,
) -> IterableDataset:
    """This process's part of the training stream, shuffled (file order and a buffer of `shuffle_buffer` examples,
    both drawn from seed + epoch) and tokenized as it is read: `encode` are batched maps (`stream_encoders`), the
    first of which reads the text `columns` and replaces them."""
    stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    if world_size > 1:  # every process draws the same shuffle, so the parts are disjoint
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size, strategy=sharding)
    stream = stream.select_columns(columns)
    for number, function in enumerate(encode):
        stream = stream.map(function, batched=True, remove_columns=None if number else columns)
    return stream


def stream_encoders(tokenizer, columns: list[str], max_length: int) -> list:
    """The batched maps that make training examples of the text `columns`, as `tokenize_pairs` (two columns: source
    and target) and `tokenize_blocks` (one column) do."""
    if len(columns) == 2:
        return [pair_encoder(tokenizer, *columns, max_length)]
    return list(block_encoder(tokenizer, *columns, max_length))
