"""`vaswani-tokenizer train`: train the shared vocabulary (§5.1) on text files and save it for `from_pretrained`.

    vaswani-tokenizer train --files train.en train.es --vocab-size 37000 --out tokenizer/
    vaswani-tokenizer train --files pairs.jsonl.xz --column en es --vocab-size 8000 --out tokenizer/

The files are read as `vaswani-train` reads its data (`vaswani.training.data`): `.jsonl`/`.json`, `.csv` and
`.parquet` files give records whose `--column` is read (several columns, like `en es` above, train one vocabulary
shared by both languages); `.txt` files, and files of any other suffix (`train.en`), hold one example a line. Any
of them may be compressed (`.gz`, `.bz2`, `.xz`, `.zst`). Rows without text are skipped with a warning
(`--strict-data` stops at them). Problems with the input end the command with a one-line message and exit status 1.
"""

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets

from vaswani.configuration.errors import InputError
from vaswani.tokenization.data_files import data_file_format, read_data_file, usable_rows

from .tokenization_vaswani import MODELS, train_tokenizer


PROG = "vaswani-tokenizer"
TEXT = "text"  # the column of plain-text files, and the one column of the examples handed to the trainer


@contextmanager
def datasets_quiet(progress_bars: bool) -> Iterator[None]:
    """Silence `datasets`' own logging while reading (its reader errors reach the user as one line each), and its
    progress bars unless asked for; both settings are global, so they are restored afterwards."""
    verbosity, bars_were_off = datasets.logging.get_verbosity(), datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if not progress_bars:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def read_examples(paths: list[Path], columns: list[str], strict: bool = False) -> datasets.Dataset:
    """The examples of all files as one `text` column: the lines of plain-text files, the `columns` of the records
    of the others. Rows without text are skipped, or stop the command when `strict`."""
    parts = []
    for path in paths:
        file_format = data_file_format(path) or "text"
        file_columns = [TEXT] if file_format == "text" else columns
        dataset = read_data_file(path, file_format)
        for column in file_columns:
            if column not in dataset.column_names:
                found = ", ".join(dataset.column_names)
                raise InputError(f"{path}: no column {column!r} (found: {found}); choose with --column.")
        dataset = usable_rows(dataset, file_columns, str(path), strict)
        parts += [dataset.select_columns([column]).rename_columns({column: TEXT}) for column in file_columns]
    return datasets.concatenate_datasets(parts)


def check_paths(paths: list[Path], out: Path) -> None:
    """Fail before reading anything when a path is wrong."""
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file.")
        if not path.is_file():
            raise InputError(f"{path}: not a file.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train the shared source-target vocabulary (§5.1).")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a tokenizer on text files and save it")
    train.add_argument(
        "--files", nargs="+", type=Path, required=True, help="plain text (one example a line), .jsonl, .csv or .parquet"
    )
    train.add_argument("--out", type=Path, required=True, help="folder to save the tokenizer in")
    train.add_argument("--vocab-size", type=int, default=37000, help="tokens, special tokens included (37000)")
    train.add_argument("--model", choices=MODELS, default="bpe", help="byte-level bpe is lossless (bpe)")
    train.add_argument(
        "--column", nargs="+", default=["text"], help="the field(s) holding the text in record files (text)"
    )
    train.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a merge (2)")
    train.add_argument("--model-max-length", type=int, default=1024, help="length truncation cuts to (1024)")
    train.add_argument("--strict-data", action="store_true", help="stop at a row without text instead of skipping it")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def train_command(args: argparse.Namespace) -> None:
    check_paths(args.files, args.out)
    with datasets_quiet(progress_bars=not args.quiet):
        examples = read_examples(args.files, args.column, args.strict_data)
    start = time.perf_counter()
    tokenizer = train_tokenizer(
        examples,
        vocab_size=args.vocab_size,
        model=args.model,
        min_frequency=args.min_frequency,
        model_max_length=args.model_max_length,
        show_progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    tokenizer.save_pretrained(args.out)
    print(
        f"Trained a {args.model} tokenizer of {len(tokenizer)} tokens on {len(examples)} examples in "
        f"{seconds:.1f} s; saved it to {args.out}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train_command(args)
    except (InputError, ValueError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
