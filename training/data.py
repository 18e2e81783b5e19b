"""Data for training: load a dataset (embedded, Hub or local files), check it, tokenize it, batch it.

Bad data gets a message that names the file and the row, never a pyarrow, pandas or tokenizers traceback. A file
that cannot be read at all (empty, not UTF-8, a CSV row with more or fewer fields than the header) stops the run at
that line; so does a value that is not text. A row whose text is missing, null or blank is skipped, counted in a
warning, unless `strict` (`--strict-data`) makes it an error too: blank lines in text files are common and harmless,
but a user who expects clean data should be able to ask for a stop.

Pure functions over `datasets` (no Accelerator here). Tokenization runs through `Dataset.map(batched=True)`,
which caches its results next to file-backed datasets. With `--streaming` the training split is a
`datasets.IterableDataset` instead, tokenized as it is read (`load_streaming_dataset`, `process_stream`,
`StreamBatches`). Batches come from transformers' collators:
`DataCollatorForSeq2Seq` (pads labels with -100 and builds decoder inputs from them) and
`DataCollatorForLanguageModeling` (BERT's 15% masking, 80/10/10, for mlm; labels = inputs for clm).
"""

import csv
import itertools
import logging
from pathlib import Path

import datasets
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.distributed import split_dataset_by_node
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from vaswani.training.arguments import InputError
from vaswani.training.batching import check_max_tokens, pack
from vaswani.training.corpus import load_english_corpus, load_parallel_corpus

EMBEDDED_DATASETS = {"bible-en-es": load_parallel_corpus, "bible-en": load_english_corpus}
FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # datasets decompresses these itself
MLM_PROBABILITY = 0.15  # BERT's masking rate
logger = logging.getLogger(__name__)


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


def data_file_format(path: Path) -> str | None:
    """The `datasets` builder that reads `path`, by its suffix under any compression one (`a.jsonl.xz` -> json)."""
    suffixes = path.suffixes[:-1] if path.suffix in COMPRESSIONS else path.suffixes
    return FILE_FORMATS.get(suffixes[-1] if suffixes else "")


def load_local_files(path: Path, text_columns: list[str] | None = None, strict: bool = False) -> DatasetDict:
    """Text (one example per line), JSON/JSON-lines, CSV or Parquet files, maybe compressed; a folder holds files
    of one format. Each file is read on its own, so that a bad row is named by its file and row number."""
    files = sorted(p for p in path.iterdir() if data_file_format(p)) if path.is_dir() else [path]
    formats = {data_file_format(file) for file in files}
    if not files or None in formats:
        raise InputError(f"{path} holds no readable data file; use {', '.join(FILE_FORMATS)} files.")
    if len(formats) > 1:
        raise InputError(f"{path} mixes file formats ({', '.join(sorted(formats))}); keep one format per folder.")
    file_format = formats.pop()
    parts = [usable_rows(read_data_file(file, file_format), text_columns or [], str(file), strict) for file in files]
    try:
        train = datasets.concatenate_datasets([part.cast(parts[0].features) for part in parts])
    except (ValueError, TypeError) as error:  # arrow cannot align the files' columns
        raise InputError(f"The files of {path} do not share their columns and types: {error}") from error
    return DatasetDict({"train": train})


def read_data_file(file: Path, file_format: str) -> Dataset:
    if problem := text_file_problem(file, file_format):
        raise InputError(problem)
    try:
        dataset = datasets.load_dataset(file_format, data_files=str(file), split="train")
    except Exception as error:  # arrow, pandas, json and the codecs each raise their own types
        while error.__cause__ or error.__context__:  # the innermost error says what the parser met
            error = error.__cause__ or error.__context__
        raise InputError(f"Could not read {file}: {type(error).__name__}: {error}") from error
    if len(dataset) == 0:
        raise InputError(f"{file} holds no examples.")
    return dataset


def text_file_problem(file: Path, file_format: str) -> str | None:
    """What makes a text, JSON or CSV file unreadable, found before `datasets` reads it: arrow's JSON reader takes
    bytes that are not UTF-8 and fails only later, on access, and pandas fills a short CSV row with nulls (so it
    would be skipped as a row without text, hiding a broken quote that shifts the columns of the rows after it)."""
    if file.stat().st_size == 0:
        return f"{file} is empty."
    if file_format == "parquet" or file.suffix in COMPRESSIONS:
        return None
    with file.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                return (f"{file} line {number} is not UTF-8 text (byte {line[bad.start]:#04x} at column "
                        f"{bad.start + 1}); save the file as UTF-8.")  # fmt: skip
    return ragged_csv_row(file) if file_format == "csv" else None


def ragged_csv_row(file: Path) -> str | None:
    with file.open(newline="", encoding="utf-8") as text:
        rows = csv.reader(text)
        header = next(rows, [])
        for row in rows:
            if row and len(row) != len(header):
                return (f"{file} line {rows.line_num} has {len(row)} fields but the header has {len(header)}; quote "
                        'fields that contain commas ("a, b").')  # fmt: skip
    return None


def usable_rows(dataset: Dataset, columns: list[str], origin: str, strict: bool) -> Dataset:
    """`dataset` without the rows whose `columns` hold no text (missing, null or blank), with a warning that counts
    them; `strict` stops at the first instead. A value that is not text always stops: the column is not what the
    run was told it is."""
    columns = [column for column in columns if column in dataset.column_names]
    skipped = []
    for start in range(0, len(dataset) if columns else 0, 10_000):
        batch = dataset.select_columns(columns)[start : start + 10_000]
        for offset, values in enumerate(zip(*(batch[column] for column in columns))):
            row = start + offset + 1
            for column, value in zip(columns, values):
                if value is not None and not isinstance(value, str):
                    raise InputError(f"{origin} row {row}: {column} holds {value!r:.60}, not text.")
                if (value is None or not value.strip()) and strict:
                    raise InputError(
                        f"{origin} row {row}: {column} is missing or blank; fix or remove the row, or leave out "
                        "--strict-data to skip such rows."
                    )
            if any(value is None or not value.strip() for value in values):
                skipped.append(row - 1)
    if not skipped:
        return dataset
    if len(skipped) == len(dataset):
        raise InputError(f"{origin}: no row has text in {', '.join(columns)}.")
    logger.warning(
        f"{origin}: skipped {len(skipped)} of {len(dataset)} rows whose {' or '.join(columns)} is missing or blank "
        "(--strict-data stops at them instead)."
    )
    return dataset.select(sorted(set(range(len(dataset))) - set(skipped)))


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


def example_lengths(dataset: Dataset) -> list[int]:
    """Tokens per example (source + target for pairs), for grouping examples of similar length into batches."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    if "labels" in dataset.column_names:
        lengths = [length + len(labels) for length, labels in zip(lengths, dataset["labels"])]
    return lengths


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler (batches of similar lengths waste less compute on padding), shuffled by
    (seed, epoch) alone: every process draws the same order, and a resumed run draws the order it left."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


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
    columns = text_columns or []
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
        files = sorted(p for p in path.iterdir() if data_file_format(p)) if path.is_dir() else [path]
        formats = {data_file_format(file) for file in files}
        if not files or None in formats or len(formats) > 1:
            raise InputError(f"{path} must hold data files of one format: {', '.join(FILE_FORMATS)}.")
        data_files = [str(file) for file in files]  # one shard per file
        return {"train": datasets.load_dataset(formats.pop(), data_files=data_files, split="train", streaming=True)}
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
    """`usable_rows` for a stream: rows without text are left out as they are read (they cannot be counted before),
    a value that is not text, or with `strict` a missing one, stops the run at its example."""

    def has_text(example: dict, index: int) -> bool:
        for column in columns:
            value = example.get(column)
            if value is not None and not isinstance(value, str):
                raise InputError(f"{origin} example {index + 1}: {column} holds {value!r:.60}, not text.")
            if strict and (value is None or not value.strip()):
                raise InputError(
                    f"{origin} example {index + 1}: {column} is missing or blank; fix or remove the row, or leave "
                    "out --strict-data to skip such rows."
                )
        return all(example.get(column) and example[column].strip() for column in columns)

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


def stream_encoders(tokenizer, args) -> tuple[list[str], list]:
    """The text columns and the batched maps that make training examples of them, as `tokenize_pairs` and
    `tokenize_blocks` do."""
    if args.objective == "seq2seq":
        columns = [args.source_column, args.target_column]
        return columns, [pair_encoder(tokenizer, *columns, args.max_length)]
    return [args.text_column], list(block_encoder(tokenizer, args.text_column, args.max_length))


def example_size(example: dict) -> int:
    """Padded tokens the example costs on each side (as `batching.example_sizes`)."""
    return max(len(example["input_ids"]), len(example.get("labels") or ()))


class StreamBatches(torch.utils.data.IterableDataset):
    """Batches (lists of examples, collated by the DataLoader) from a stream of tokenized examples.

    The stream is cut into pools of `pool_size` examples; each pool is sorted by size and cut into batches of
    `batch_size` examples, or packed into batches of at most `max_tokens` padded tokens per side (as
    `batching.pack`), and its batches are shuffled, so that a batch holds examples of similar length (less padding)
    but the batch order stays random. The examples left over by a pool's batches of `batch_size` join the next pool;
    those of the epoch's last pool are dropped. Everything is drawn from (seed, epoch): the same epoch gives the same
    batches, and `skip` (set before iterating) drops the first ones without collating them, for a resume.
    """

    def __init__(self, examples: IterableDataset, seed: int, pool_size: int, batch_size: int | None = None,
                 max_tokens: int | None = None):  # fmt: skip
        self.examples, self.seed, self.pool_size = examples, seed, pool_size
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.examples.set_epoch(epoch)

    def __iter__(self):
        return itertools.islice(self.batches(), self.skip, None)

    def batches(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        left_over = []
        examples = iter(self.examples)
        while pool := list(itertools.islice(examples, self.pool_size)):
            pool = [*left_over, *pool]
            sizes = [example_size(example) for example in pool]
            order = sorted(range(len(pool)), key=sizes.__getitem__)  # stable: equal sizes keep the shuffled order
            if self.max_tokens is not None:
                check_max_tokens(sizes, self.max_tokens)
                batches, left_over = pack(order, sizes, self.max_tokens), []
            else:
                whole = len(order) - len(order) % self.batch_size
                batches = [order[start : start + self.batch_size] for start in range(0, whole, self.batch_size)]
                left_over = [pool[index] for index in order[whole:]]
            for index in torch.randperm(len(batches), generator=generator).tolist():
                yield [pool[position] for position in batches[index]]
