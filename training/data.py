"""Data for training: load a dataset (embedded, Hub or local files), check it, tokenize it, batch it.

Pure functions over `datasets` (no Accelerator here). Tokenization runs through `Dataset.map(batched=True)`,
which caches its results next to file-backed datasets. Batches come from transformers' collators:
`DataCollatorForSeq2Seq` (pads labels with -100 and builds decoder inputs from them) and
`DataCollatorForLanguageModeling` (BERT's 15% masking, 80/10/10, for mlm; labels = inputs for clm).
"""

from pathlib import Path

import datasets
import torch
from datasets import Dataset, DatasetDict
from transformers import DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from vaswani.training.corpus import load_english_corpus, load_parallel_corpus

EMBEDDED_DATASETS = {"bible-en-es": load_parallel_corpus, "bible-en": load_english_corpus}
FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
MLM_PROBABILITY = 0.15  # BERT's masking rate


def load_raw_dataset(name: str, config: str | None = None, validation_fraction: float = 0.01, seed: int = 42):
    """The named dataset as a DatasetDict with `train` and `validation` (and `test` when it has one)."""
    if name in EMBEDDED_DATASETS:
        return EMBEDDED_DATASETS[name]()
    path = Path(name)
    dataset = load_local_files(path) if path.exists() else load_hub_dataset(name, config)
    return with_validation_split(dataset, validation_fraction, seed)


def load_hub_dataset(name: str, config: str | None) -> DatasetDict:
    try:
        return datasets.load_dataset(name, config)
    except Exception as error:  # datasets raises many types; the user needs the name and the cause
        raise ValueError(
            f"Could not load dataset {name!r}: no such local file or folder, and the Hub said: {error}"
        ) from error


def load_local_files(path: Path) -> DatasetDict:
    """Text (one example per line), JSON/JSON-lines, CSV or Parquet files; a folder holds files of one format."""
    files = sorted(p for p in path.iterdir() if p.suffix in FILE_FORMATS) if path.is_dir() else [path]
    formats = {FILE_FORMATS.get(file.suffix) for file in files}
    if not files or None in formats:
        raise ValueError(f"{path} holds no readable data file; use {', '.join(FILE_FORMATS)} files.")
    if len(formats) > 1:
        raise ValueError(f"{path} mixes file formats ({', '.join(sorted(formats))}); keep one format per folder.")
    try:
        return datasets.load_dataset(formats.pop(), data_files={"train": [str(file) for file in files]})
    except Exception as error:  # a malformed file surfaces as one of several arrow/json/csv errors
        raise ValueError(f"Could not read {path}: {error}") from error


def with_validation_split(dataset: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """Hold out `fraction` of train as validation when the dataset has no validation split of its own."""
    if "validation" in dataset:
        return dataset
    check_not_empty(dataset["train"], "train")
    if not 0 < fraction < 1 or len(dataset["train"]) < 2:
        raise ValueError(f"Cannot hold out a validation fraction of {fraction} from {len(dataset['train'])} examples.")
    split = dataset["train"].train_test_split(test_size=fraction, seed=seed)
    return DatasetDict({**dataset, "train": split["train"], "validation": split["test"]})


def check_columns(dataset: DatasetDict, columns: list[str]) -> None:
    available = dataset["train"].column_names
    missing = [column for column in columns if column not in available]
    if missing:
        raise ValueError(f"The dataset has no column {', '.join(missing)}; its columns are {', '.join(available)}.")


def check_not_empty(dataset: Dataset, split: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"The {split} split of the dataset is empty.")


def tokenize_pairs(dataset: DatasetDict, tokenizer, source: str, target: str, max_length: int) -> DatasetDict:
    """Source ids as `input_ids` and target ids as `labels` (`A </s>`), both truncated to `max_length`."""
    check_columns(dataset, [source, target])

    def encode(batch):
        return tokenizer(batch[source], text_target=batch[target], max_length=max_length, truncation=True)

    columns = dataset["train"].column_names
    return dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing pairs")


def tokenize_blocks(dataset: DatasetDict, tokenizer, column: str, block_size: int) -> DatasetDict:
    """Texts concatenated and cut into blocks of `block_size` tokens (the tail that fills no block is dropped)."""
    check_columns(dataset, [column])

    def encode(batch):
        return {"input_ids": tokenizer(batch[column])["input_ids"]}

    def group(batch):
        tokens = [token for ids in batch["input_ids"] for token in ids]
        blocks = [tokens[start : start + block_size] for start in range(0, len(tokens) - block_size + 1, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks]}

    columns = dataset["train"].column_names
    encoded = dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing text")
    return encoded.map(group, batched=True, batch_size=1000, desc=f"Grouping into blocks of {block_size}")


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
