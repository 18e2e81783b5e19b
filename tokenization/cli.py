"""`vaswani-tokenizer train`: train the shared vocabulary (§5.1) on text files and save it for `from_pretrained`.

    vaswani-tokenizer train --files train.en train.es --vocab-size 37000 --out tokenizer/
    vaswani-tokenizer train --files pairs.jsonl.xz --column en es --vocab-size 8000 --out tokenizer/

Plain-text files hold one example a line; `.jsonl` files one JSON object a line, whose `--column` is read
(several columns, like `en es` above, train one vocabulary shared by both languages). Either kind may be
compressed (`.gz`, `.bz2`, `.xz`). Blank lines are skipped. Problems with the input end the command with a
one-line message and exit status 1.
"""

import argparse
import bz2
import gzip
import json
import lzma
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .tokenization_vaswani import MODELS, train_tokenizer


PROG = "vaswani-tokenizer"
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


class InputError(Exception):
    """A problem with the input files, reported as one line without a traceback."""


def open_file(path: Path, mode: str):
    opener = OPENERS.get(path.suffix, open)
    return opener(path, mode, **({"encoding": "utf-8"} if mode == "rt" else {}))


def is_jsonl(path: Path) -> bool:
    suffixes = path.suffixes[:-1] if path.suffix in OPENERS else path.suffixes
    return suffixes[-1:] == [".jsonl"]


def count_lines(path: Path) -> int:
    """Non-blank lines, counted on raw bytes: cheap enough to size the progress bar and to spot empty files."""
    try:
        with open_file(path, "rb") as lines:
            return sum(1 for line in lines if line.strip())
    except (OSError, EOFError, lzma.LZMAError) as error:
        # Mostly a compressed suffix on a file that is not (or no longer whole) in that format.
        raise InputError(f"{path}: cannot be read ({error}).") from None


def jsonl_texts(line: str, columns: list[str], location: str) -> list[str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{location}: not valid JSON ({error.msg}).") from None
    for column in columns:
        if not isinstance(record, dict) or column not in record:
            found = ", ".join(record) if isinstance(record, dict) else f"a JSON {type(record).__name__}"
            raise InputError(f"{location}: no column {column!r} (found: {found}); choose with --column.")
        if not isinstance(record[column], str):
            raise InputError(f"{location}: column {column!r} holds {type(record[column]).__name__}, not text.")
    return [record[column] for column in columns]


def read_examples(path: Path, columns: list[str]) -> Iterator[str]:
    """The examples of one file: its non-blank lines, or the `columns` of each of its JSON lines."""
    jsonl = is_jsonl(path)
    try:
        with open_file(path, "rt") as lines:
            for line_number, line in enumerate(lines, start=1):
                # Only the line break goes: the byte-level tokenizer keeps all other whitespace.
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if jsonl:
                    yield from jsonl_texts(line, columns, f"{path}:{line_number}")
                else:
                    yield line
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}).") from None


class Examples:
    """All examples of all files, with their number, so the trainer can show a progress bar."""

    def __init__(self, paths: list[Path], columns: list[str]):
        self.paths, self.columns = paths, columns
        self.count = 0
        for path in paths:
            line_count = count_lines(path)
            if line_count == 0:
                raise InputError(f"{path}: the file is empty (no non-blank line).")
            self.count += line_count * (len(columns) if is_jsonl(path) else 1)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            yield from read_examples(path, self.columns)


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
        "--files", nargs="+", type=Path, required=True, help="plain text (one example a line) or .jsonl files"
    )
    train.add_argument("--out", type=Path, required=True, help="folder to save the tokenizer in")
    train.add_argument("--vocab-size", type=int, default=37000, help="tokens, special tokens included (37000)")
    train.add_argument("--model", choices=MODELS, default="bpe", help="byte-level bpe is lossless (bpe)")
    train.add_argument(
        "--column", nargs="+", default=["text"], help="the field(s) holding the text in .jsonl files (text)"
    )
    train.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a merge (2)")
    train.add_argument("--model-max-length", type=int, default=1024, help="length truncation cuts to (1024)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def train_command(args: argparse.Namespace) -> None:
    check_paths(args.files, args.out)
    examples = Examples(args.files, args.column)
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
