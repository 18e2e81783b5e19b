"""Reading the data files a user names: which files a path holds, reading each, and checking that its rows hold text.

`vaswani-tokenizer` and `vaswani-train` read data through these functions, so a bad file gets the same message from
both: one that names the file and the row, never a pyarrow, pandas or tokenizers traceback. A file that cannot be
read at all (empty, not UTF-8, a CSV row with more or fewer fields than the header) stops at that line; so does a
value that is not text. A row whose text is missing, null or blank is skipped, counted in a warning, unless
`strict` (`--strict-data`) makes it an error too: blank lines in text files are common and harmless, but a user who
expects clean data should be able to ask for a stop.
"""

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset

from vaswani.configuration.errors import InputError

FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")  # datasets decompresses these itself
logger = logging.getLogger(__name__)


def data_file_format(path: Path) -> str | None:
    """The `datasets` builder that reads `path`, by its suffix under any compression one (`a.jsonl.xz` -> json)."""
    suffixes = path.suffixes[:-1] if path.suffix in COMPRESSIONS else path.suffixes
    return FILE_FORMATS.get(suffixes[-1] if suffixes else "")


def data_files(path: Path) -> tuple[list[Path], str]:
    """The data files at `path` (the file itself, or the files of a folder, sorted) and their one `datasets` format."""
    files = sorted(p for p in path.iterdir() if data_file_format(p)) if path.is_dir() else [path]
    formats = {data_file_format(file) for file in files}
    if not files or None in formats:
        raise InputError(f"{path} holds no readable data file; use {', '.join(FILE_FORMATS)} files.")
    if len(formats) > 1:
        raise InputError(f"{path} mixes file formats ({', '.join(sorted(formats))}); keep one format per folder.")
    return files, formats.pop()


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


def row_has_text(values: Sequence, columns: Sequence[str], where: str, strict: bool) -> bool:
    """Whether every column of a row holds text. A value that is not text always stops (the column is not what the
    run was told it is); a missing or blank one stops only when `strict`. `where` names the row in the message."""
    for column, value in zip(columns, values):
        if value is not None and not isinstance(value, str):
            raise InputError(f"{where}: {column} holds {value!r:.60}, not text.")
        if strict and (value is None or not value.strip()):
            raise InputError(
                f"{where}: {column} is missing or blank; fix or remove the row, or leave out --strict-data to skip "
                "such rows."
            )
    return all(value is not None and value.strip() for value in values)


def usable_rows(dataset: Dataset, columns: list[str], origin: str, strict: bool) -> Dataset:
    """`dataset` without the rows whose `columns` hold no text (`row_has_text`), with a warning that counts them."""
    columns = [column for column in columns if column in dataset.column_names]
    skipped = []
    for start in range(0, len(dataset) if columns else 0, 10_000):
        batch = dataset.select_columns(columns)[start : start + 10_000]
        for offset, values in enumerate(zip(*(batch[column] for column in columns))):
            if not row_has_text(values, columns, f"{origin} row {start + offset + 1}", strict):
                skipped.append(start + offset)
    if not skipped:
        return dataset
    if len(skipped) == len(dataset):
        raise InputError(f"{origin}: no row has text in {', '.join(columns)}.")
    logger.warning(
        f"{origin}: skipped {len(skipped)} of {len(dataset)} rows whose {' or '.join(columns)} is missing or blank "
        "(--strict-data stops at them instead)."
    )
    return dataset.select(sorted(set(range(len(dataset))) - set(skipped)))
