"""`vaswani-translate`: translate a file, one sentence a line, with `generate()`, a compiled PyTorch decoder or
CTranslate2; or score given translations under the model.

    vaswani-translate --model MODEL [--backend transformers|torch-compiled|ctranslate2] [--input FILE] [--output FILE]
                      [--num-beams N] [--length-penalty A] [--max-tokens N | --batch-size N] [--device DEVICE]
                      [--compute-type TYPE] [--n-best N] [--format text|jsonl] [--output-tokens]
                      [--target-prefix] [--no-split] [--sampling-topk K [--sampling-temperature T] [--seed S]]
    vaswani-translate --model MODEL --score [--input-format tsv|jsonl [--source-field F] [--target-field F]] ...

Reads `--input` (default: stdin) and writes one translation a line, in input order, to `--output` (default:
stdout); a progress bar goes to stderr. Sentences are tokenized once, sorted by length and batched by tokens
(`--max-tokens`, the padded source tokens of a batch) or by sentences (`--batch-size`), so that batches carry
little padding. Empty lines stay empty; translations never span lines. A line longer than the model takes is split
into sentences (`sentence_split`), a sentence still too long at the token budget, and the pieces' translations are
joined with a space in order; with `--no-split` it is truncated instead (one warning names how many). Each output
stops at the paper's limit, its source length + 50 tokens (§6.1).

Scores are log-probabilities under the model (natural log), the end token included, computed the same way for
`--score` and for hypotheses: a teacher-forced forward pass on `transformers`, `Translator.score_batch` on
CTranslate2 (they agree within 1e-3 per token in float32). `--n-best N` keeps N hypotheses ranked by
log_prob / num_tokens ** length_penalty; `--format jsonl` writes them with their scores (and, with
`--output-tokens`, each token and its log-probability). `--target-prefix` reads SOURCE<TAB>PREFIX lines and starts
each translation with its prefix (`decoder_input_ids` in generate(), `target_prefix` in CTranslate2).
`--sampling-topk` samples instead of searching; with `--seed`, the same command gives the same output on the same
backend (the two backends draw different samples).

`--backend ctranslate2` takes a CTranslate2 folder (made by `vaswani-export-ctranslate2`) or a model folder (or Hub
id), which is converted once, in float32, and cached under `$HF_HOME/vaswani/ctranslate2/`, not in the model
folder: that may be read-only (a Hub snapshot, shared storage), and `vaswani-push` would upload the copy with the
model. A model saved again is converted again. `--compute-type int8` runs it quantized, CTranslate2's fastest CPU
path.

A backend (`translation_backends.py`) has `translate(sources, num_beams, length_penalty, max_new_tokens)` (the best
hypothesis); what it offers beyond that it lists in `features` (`search()` for n-best lists, target prefixes and
sampling; `score()`), and an option that needs a feature the chosen backend lacks is refused in one line.

`--backend torch-compiled` decodes in PyTorch with a static cache and a compiled decoding step
(`vaswani.modeling.compiled_generation`): the tokens of `--backend transformers` in float32, several times as fast on
a CPU once compiled. On a CPU the step compiles once per model (AOTInductor, every batch shape; half a minute) and is
cached on disk for later runs. `--compute-type int8` decodes with int8 weights (bfloat16 activations).
"""

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vaswani.configuration.errors import InputError
from vaswani.modeling.batching import pack
from vaswani.modeling.pipeline_vaswani import EXTRA_OUTPUT_TOKENS
from vaswani.modeling.sentence_split import split_sentences
from vaswani.modeling.translation_backends import (
    N_BEST, SAMPLING, SCORING, TARGET_PREFIX, CTranslate2Backend, Decoding, TorchCompiledBackend, TransformersBackend,
    torch_quantization,
)  # fmt: skip

DEFAULT_MAX_TOKENS = 4096


# ----------------------------------------------------------------------------------------------- input


def read_lines(path: str | None) -> list[str]:
    """The lines of `path` (stdin for None or "-"), without their line ends. Split on "\\n" only, as `wc -l` and
    line-aligned corpora count lines: `str.splitlines` would also split at form feeds and Unicode separators."""
    if path in (None, "-"):
        stdin, path = sys.stdin, "stdin"
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8", "surrogateescape")
    else:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as error:
            raise InputError(f"--input: {path} does not exist.") from error
        except IsADirectoryError as error:
            raise InputError(f"--input: cannot read {path} as UTF-8 text: {error}") from error
    text = decode_utf8(data, path)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line.removesuffix("\r") for line in lines]


def decode_utf8(data: bytes, source: str) -> str:
    """`data` as text, or an error naming the lines that are not UTF-8: none is translated, so that the output
    stays line for line the input's."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        bad = [number for number, line in enumerate(data.split(b"\n"), 1) if not is_utf8(line)]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise InputError(f"--input: cannot read {source} as UTF-8 text: line {bad[0]}{more} is not UTF-8; convert "
                         "the text to UTF-8 (for example with iconv) and translate it again.") from None  # fmt: skip


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def split_prefix_column(lines: list[str]) -> tuple[list[str], list[str]]:
    """`SOURCE<TAB>PREFIX` lines as sources and target prefixes; a line without a tab has no prefix."""
    columns = [line.split("\t", 1) for line in lines]
    return [column[0] for column in columns], [column[1] if len(column) == 2 else "" for column in columns]


def read_pairs(lines: list[str], input_format: str, source_field: str, target_field: str) -> list[tuple[str, str]]:
    """The (source, target) pairs of `SOURCE<TAB>TARGET` lines, or of JSON lines with those two string fields."""
    pairs = []
    for number, line in enumerate(lines, start=1):
        if input_format == "jsonl":
            pairs.append(json_pair(line, number, source_field, target_field))
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            raise InputError(
                f"--input: line {number} has {len(columns)} tab-separated column(s); --score reads SOURCE<TAB>TARGET "
                "lines (or JSON lines with --input-format jsonl)."
            )
        pairs.append((columns[0], columns[1]))
    return pairs


def json_pair(line: str, number: int, source_field: str, target_field: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"--input: line {number} is not JSON: {error}") from error
    values = [row.get(name) if isinstance(row, dict) else None for name in (source_field, target_field)]
    if not all(isinstance(value, str) for value in values):
        raise InputError(
            f"--input: line {number} is not an object with the string fields {source_field!r} and {target_field!r} "
            "(name others with --source-field and --target-field)."
        )
    return values[0], values[1]


# ----------------------------------------------------------------------------------------------- batching


def length_batches(lengths: dict, max_tokens: int | None, batch_size: int | None) -> list[list]:
    """Keys of `lengths` in batches, longest sentences first (a batch too large for memory fails at once, not at the
    end): at most `batch_size` sentences, or at most `max_tokens` source tokens once padded to the longest."""
    indices = list(lengths)
    sizes = [lengths[index] for index in indices]
    longest_first = sorted(range(len(indices)), key=lambda position: -sizes[position])
    return [[indices[position] for position in batch] for batch in pack(longest_first, sizes, max_tokens, batch_size)]


def tokenize(tokenizer, lines: dict[int, str], max_length: int, what: str = "line") -> dict[int, list[int]]:
    """Token ids of each line, cut to `max_length` with one warning for all the lines that were longer. `what`
    "target" encodes them as targets (`text_target`) and names them so in the warning."""
    indices = list(lines)
    if not indices:
        return {}
    texts = [lines[index] for index in indices]
    as_target = {"text_target": texts} if what == "target" else {"text": texts}
    encoded = tokenizer(**as_target, truncation=True, max_length=max_length)
    truncated = [index for index, encoding in zip(indices, encoded.encodings) if encoding.overflowing]
    if truncated:
        print(
            f"vaswani-translate: warning: {len(truncated)} {what}(s) longer than {max_length} tokens were truncated "
            f"(the first: line {truncated[0] + 1}).",
            file=sys.stderr,
        )
    return dict(zip(indices, encoded["input_ids"]))


def source_pieces(tokenizer, lines: dict[int, str], max_length: int, split: bool) -> dict[tuple[int, int], list[int]]:
    """Token ids of the pieces of each line, keyed (line index, piece number): a line of at most `max_length` tokens
    is one piece; a longer one is split into sentences, and a sentence still too long at the token budget, so that
    nothing is lost. With `split=False` a long line is truncated instead (with one warning for all of them)."""
    if not split:
        return {(index, 0): ids for index, ids in tokenize(tokenizer, lines, max_length).items()}
    encoded = tokenizer(list(lines.values()), verbose=False)["input_ids"] if lines else []
    pieces, split_lines = {}, 0
    for index, ids in zip(lines, encoded):
        if len(ids) <= max_length:
            pieces[(index, 0)] = ids
            continue
        split_lines += 1
        sentences = tokenizer(split_sentences(lines[index]), verbose=False)["input_ids"]
        chunks = [chunk for ids in sentences for chunk in token_budget_chunks(ids, max_length, tokenizer.eos_token_id)]
        pieces.update(((index, number), chunk) for number, chunk in enumerate(chunks))
    if split_lines:
        print(
            f"vaswani-translate: {split_lines} line(s) longer than {max_length} tokens were split into sentences, "
            "translated in pieces and joined (--no-split truncates them instead).",
            file=sys.stderr,
        )
    return pieces


def token_budget_chunks(ids: list[int], max_length: int, eos_token_id: int | None) -> list[list[int]]:
    """`ids` in consecutive chunks of at most `max_length` tokens, each ending as `ids` does (with the end token)."""
    ending = ids[-1:] if ids and ids[-1] == eos_token_id else []
    body, step = ids[: len(ids) - len(ending)], max_length - len(ending)
    return [body[start : start + step] + ending for start in range(0, len(body), step)] or [ids]


def output_limit(source_length: int, max_positions: int | None) -> int:
    """Source length + 50 new tokens (§6.1), within the decoder's positions when they are learned."""
    return min(source_length + EXTRA_OUTPUT_TOKENS, sys.maxsize if max_positions is None else max_positions)


# ----------------------------------------------------------------------------------------------- translating


@dataclass
class Hypothesis:
    """One translation; once scored, its tokens (the end token last) and each token's log-probability."""

    text: str
    tokens: list[str] = field(default_factory=list)
    token_log_probs: list[float] = field(default_factory=list)

    @property
    def log_prob(self) -> float:
        return sum(self.token_log_probs)

    @property
    def num_tokens(self) -> int:
        return len(self.token_log_probs)

    @property
    def mean_log_prob(self) -> float:
        return self.log_prob / self.num_tokens

    def score(self, length_penalty: float) -> float:
        """What hypotheses are ranked by: log-probability / tokens ** length_penalty."""
        return self.log_prob / self.num_tokens**length_penalty

    @staticmethod
    def joined(parts: "list[Hypothesis]") -> "Hypothesis":
        """The translations of a line's pieces as one, in order; the scores add up."""
        texts = [part.text for part in parts if part.text]
        tokens = [token for part in parts for token in part.tokens]
        return Hypothesis(" ".join(texts), tokens, [value for part in parts for value in part.token_log_probs])


# What callers that build their own options (benchmarks) may leave out: one best, beam search, split long lines.
TRANSLATION_DEFAULTS = {
    "n_best": 1, "sampling_topk": None, "sampling_temperature": 1.0, "seed": None, "no_split": False,
    "format": "text",
}  # fmt: skip


def translate_lines(backend, lines: list[str], args: argparse.Namespace) -> list[str]:
    """The best translation of each line, in order; empty (or blank) lines stay empty."""
    return [hypotheses[0].text if hypotheses else "" for hypotheses in translate_hypotheses(backend, lines, args)]


def translate_hypotheses(backend, lines: list[str], args: argparse.Namespace, prefixes: list[str] | None = None):
    """The hypotheses of each line, best first, scored when the options ask for scores; none for an empty line."""
    args = argparse.Namespace(**{**TRANSLATION_DEFAULTS, **vars(args)})
    decoding, scored = decoding_of(args), wants_scores(args)
    tokenizer = backend.tokenizer
    texts = {index: line for index, line in enumerate(lines) if line.strip()}
    pieces = source_pieces(tokenizer, texts, source_limit(backend), split=not args.no_split)
    prefix_ids = target_prefix_ids(tokenizer, prefixes, pieces, backend.max_positions, scored)
    if args.seed is not None:
        backend.set_seed(args.seed)
    found = {}
    max_tokens = None if args.batch_size else args.max_tokens
    with tqdm(total=len(pieces), unit="sent", desc="Translating", file=sys.stderr) as progress:
        for batch in length_batches({key: len(ids) for key, ids in pieces.items()}, max_tokens, args.batch_size):
            sources, batch_prefixes = [pieces[key] for key in batch], [prefix_ids.get(key, []) for key in batch]
            found.update(zip(batch, decode_batch(backend, sources, batch_prefixes, decoding, scored)))
            progress.update(len(batch))
    return join_pieces(found, len(lines), decoding.length_penalty if scored else None)


def decoding_of(args: argparse.Namespace) -> Decoding:
    return Decoding(
        num_beams=args.num_beams, length_penalty=args.length_penalty, num_hypotheses=args.n_best,
        sampling_topk=args.sampling_topk, sampling_temperature=args.sampling_temperature,
    )  # fmt: skip


def wants_scores(args: argparse.Namespace) -> bool:
    return args.n_best > 1 or args.format == "jsonl"


def source_limit(backend) -> int:
    tokenizer = backend.tokenizer
    return min(tokenizer.model_max_length, backend.max_positions or tokenizer.model_max_length)


def target_prefix_ids(tokenizer, prefixes, pieces, max_positions: int | None, scored: bool) -> dict:
    """Token ids of each line's target prefix, keyed as the line's first piece (the one the translation starts)."""
    found = {}
    for line, number in pieces:
        if prefixes is None or number != 0 or not prefixes[line]:
            continue
        ids = tokenizer(prefixes[line], add_special_tokens=False)["input_ids"]
        if max_positions is not None and len(ids) + scored >= max_positions:
            raise InputError(
                f"--input: line {line + 1}: the target prefix has {len(ids)} tokens, more than the decoder's "
                f"{max_positions} positions leave room for."
            )
        found[(line, number)] = ids
    return found


def decode_batch(backend, sources: list[list[int]], prefixes: list[list[int]], decoding: Decoding, scored: bool):
    """The hypotheses of each source, best first; with `scored`, scored and ranked by score."""
    tokenizer = backend.tokenizer
    # Each sentence's own limit, not its batch's: then how lines are batched does not change greedy outputs. A
    # scored hypothesis gets its end token appended, so with learned positions it leaves a position for it.
    positions = backend.max_positions
    rooms = [None if positions is None else positions - len(prefix) - scored for prefix in prefixes]
    limits = [len(prefix) + output_limit(len(source), room) for source, prefix, room in zip(sources, prefixes, rooms)]
    if decoding.num_hypotheses > 1 or decoding.sampling_topk is not None or any(prefixes) or scored:
        outputs = backend.search(sources, prefixes, decoding, limits)
    else:  # the one best hypothesis, which every backend gives
        best = backend.translate(sources, decoding.num_beams, decoding.length_penalty, max(limits))
        outputs = [[ids] for ids in best]
    outputs = [[until_end(ids, tokenizer, limit) for ids in found] for found, limit in zip(outputs, limits)]
    if not scored:
        return [[Hypothesis(as_text(tokenizer, ids)) for ids in found] for found in outputs]
    targets = [ids + [tokenizer.eos_token_id] for found in outputs for ids in found]
    log_probs = iter(backend.score([source for source, found in zip(sources, outputs) for _ in found], targets))
    ranked, targets = [], iter(targets)
    for found in outputs:
        hypotheses = [
            Hypothesis(as_text(tokenizer, ids), tokenizer.convert_ids_to_tokens(next(targets)), next(log_probs))
            for ids in found
        ]
        ranked.append(sorted(hypotheses, key=lambda hypothesis: -hypothesis.score(decoding.length_penalty)))
    return ranked


def until_end(ids: list[int], tokenizer, limit: int) -> list[int]:
    """A hypothesis' tokens before its end token (and padding), at most `limit` of them."""
    end = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids)
    return [token for token in ids[: min(end, limit)] if token != tokenizer.pad_token_id]


def as_text(tokenizer, ids: list[int]) -> str:
    # A byte-level vocabulary can produce line breaks; one translation must stay one line.
    return " ".join(tokenizer.decode(ids, skip_special_tokens=True).splitlines())


def join_pieces(found: dict, num_lines: int, length_penalty: float | None) -> list[list[Hypothesis]]:
    """Each line's hypotheses from its pieces' (the i-th of a line joins the i-th of each piece); re-ranked by
    `length_penalty` when they are scored."""
    pieces_of = defaultdict(dict)
    for (line, number), hypotheses in found.items():
        pieces_of[line][number] = hypotheses
    lines: list[list[Hypothesis]] = [[] for _ in range(num_lines)]
    for line, pieces in pieces_of.items():
        joined = [Hypothesis.joined(parts) for parts in zip(*(pieces[number] for number in sorted(pieces)))]
        if length_penalty is not None:
            joined.sort(key=lambda hypothesis: -hypothesis.score(length_penalty))
        lines[line] = joined
    return lines


# ----------------------------------------------------------------------------------------------- scoring


def score_pairs(backend, pairs: list[tuple[str, str]], args: argparse.Namespace) -> list[Hypothesis]:
    """Each (source, target) pair's target scored under the model, token by token, the end token included. Sources
    are cut as translation cuts them; targets at the length a translation can reach (the longest source + 50), or
    at the decoder's learned positions."""
    tokenizer, max_length = backend.tokenizer, source_limit(backend)
    sources = tokenize(tokenizer, dict(enumerate(source for source, _ in pairs)), max_length)
    target_limit = backend.max_positions or max_length + EXTRA_OUTPUT_TOKENS
    targets = tokenize(tokenizer, dict(enumerate(target for _, target in pairs)), target_limit, what="target")
    lengths = {index: max(len(sources[index]), len(targets[index])) for index in sources}
    scored = {}
    max_tokens = None if args.batch_size else args.max_tokens
    with tqdm(total=len(pairs), unit="pair", desc="Scoring", file=sys.stderr) as progress:
        for batch in length_batches(lengths, max_tokens, args.batch_size):
            log_probs = backend.score([sources[index] for index in batch], [targets[index] for index in batch])
            for index, values in zip(batch, log_probs):
                scored[index] = Hypothesis(pairs[index][1], tokenizer.convert_ids_to_tokens(targets[index]), values)
            progress.update(len(batch))
    return [scored[index] for index in range(len(pairs))]


# ----------------------------------------------------------------------------------------------- output


def scores_of(hypothesis: Hypothesis, with_tokens: bool) -> dict:
    scores = {
        "log_prob": hypothesis.log_prob, "mean_log_prob": hypothesis.mean_log_prob,
        "num_tokens": hypothesis.num_tokens,
    }  # fmt: skip
    if with_tokens:
        scores |= {"tokens": hypothesis.tokens, "token_log_probs": hypothesis.token_log_probs}
    return scores


def translation_output(sources: list[str], prefixes, hypotheses: list[list[Hypothesis]], args) -> str:
    """Text: one translation a line, or with --n-best N lines per input line, LOG_PROB<TAB>MEAN<TAB>TRANSLATION.
    JSON lines: one object per input line."""
    if args.format == "jsonl":
        records = []
        for index, (source, found) in enumerate(zip(sources, hypotheses)):
            record = {"source": source} | ({"target_prefix": prefixes[index]} if prefixes is not None else {})
            record["length_penalty"] = args.length_penalty
            record["hypotheses"] = [
                {"translation": hypothesis.text, "score": hypothesis.score(args.length_penalty),
                 **scores_of(hypothesis, args.output_tokens)}
                for hypothesis in found
            ]  # fmt: skip
            records.append(json.dumps(record, ensure_ascii=False))
        return "".join(record + "\n" for record in records)
    if args.n_best == 1:
        return "".join((found[0].text if found else "") + "\n" for found in hypotheses)
    rows = []
    for found in hypotheses:
        rows += [f"{h.log_prob:.4f}\t{h.mean_log_prob:.4f}\t{h.text}" for h in found] or [""] * args.n_best
    return "".join(row + "\n" for row in rows)


def score_output(pairs: list[tuple[str, str]], scored: list[Hypothesis], args) -> str:
    """Text: LOG_PROB<TAB>MEAN<TAB>TOKENS a pair; JSON lines: source, target and the same scores."""
    if args.format == "jsonl":
        records = [
            json.dumps({"source": source, "target": target, **scores_of(hypothesis, args.output_tokens)},
                       ensure_ascii=False)
            for (source, target), hypothesis in zip(pairs, scored)
        ]  # fmt: skip
        return "".join(record + "\n" for record in records)
    return "".join(f"{h.log_prob:.4f}\t{h.mean_log_prob:.4f}\t{h.num_tokens}\n" for h in scored)


# ----------------------------------------------------------------------------------------------- command line


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vaswani-translate", description="Translate text, one sentence a line, with a Vaswani seq2seq model."
    )
    parser.add_argument("--model", required=True, help="A model folder or Hub id, or a CTranslate2 folder.")
    parser.add_argument("--backend", choices=("transformers", "torch-compiled", "ctranslate2"), default="transformers")
    parser.add_argument("--input", help="A UTF-8 text file, one sentence a line. Default: stdin.")
    parser.add_argument("--output", help="Where to write the translations, one a line. Default: stdout.")
    parser.add_argument(
        "--num-beams", type=positive_int, default=None,
        help="Beam size (default: the paper's 4; 1 with --sampling-topk). 1: greedy.",
    )  # fmt: skip
    parser.add_argument(
        "--length-penalty", type=float, default=1.0,
        help="Beam scores (and the ranking of --n-best) are log-probability / tokens**A.",
    )  # fmt: skip
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS,
        help="Batch by source tokens, padding included (default: %(default)s).",
    )  # fmt: skip
    size.add_argument("--batch-size", type=positive_int, help="Batch by sentences instead.")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... Default: a GPU if there is one.")
    parser.add_argument(
        "--compute-type", default="default",
        help="CTranslate2: int8 (fastest on CPU), int8_float32, float16, ... Default: the folder's own. "
        "torch-compiled: int8 (int8 weights). Default: float32.",
    )  # fmt: skip
    add_feature_arguments(parser)
    return parser.parse_args(argv)


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("hypotheses and scores")
    output.add_argument(
        "--n-best", type=positive_int, default=1,
        help="N hypotheses per line (needs --num-beams N or more), ranked; in text, N lines per input line: "
        "LOG_PROB<TAB>MEAN_LOG_PROB<TAB>TRANSLATION.",
    )  # fmt: skip
    output.add_argument(
        "--format", choices=("text", "jsonl"), default="text",
        help="jsonl: one JSON object per line with the source, the hypotheses and their scores.",
    )  # fmt: skip
    output.add_argument("--output-tokens", action="store_true", help="jsonl: add each token and its log-probability.")
    scoring = parser.add_argument_group("scoring given translations")
    scoring.add_argument(
        "--score", action="store_true",
        help="Score SOURCE<TAB>TARGET lines: LOG_PROB<TAB>MEAN_LOG_PROB<TAB>TOKENS a line, the end token counted.",
    )  # fmt: skip
    scoring.add_argument("--input-format", choices=("tsv", "jsonl"), help="--score's input (default: tsv).")
    scoring.add_argument("--source-field", default="source", help="--input-format jsonl: the source's field.")
    scoring.add_argument("--target-field", default="target", help="--input-format jsonl: the target's field.")
    decoding = parser.add_argument_group("target prefixes, long lines, sampling")
    decoding.add_argument(
        "--target-prefix", action="store_true",
        help="Input lines are SOURCE<TAB>PREFIX: each translation starts with its PREFIX (none without a tab).",
    )  # fmt: skip
    decoding.add_argument(
        "--no-split", action="store_true",
        help="Truncate a line too long for the model instead of translating it sentence by sentence.",
    )  # fmt: skip
    decoding.add_argument(
        "--sampling-topk", type=non_negative_int,
        help="Sample each token from the K most likely (0: from all) instead of beam search.",
    )  # fmt: skip
    decoding.add_argument(
        "--sampling-temperature", type=positive_float, help="--sampling-topk: divide the logits by T (default: 1)."
    )
    decoding.add_argument("--seed", type=int, help="--sampling-topk: the random seed; the same seed, the same output.")




def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def check_options(args: argparse.Namespace) -> None:
    """Options that do not go together, refused in one line; fills in the defaults that depend on others."""
    sampling = args.sampling_topk is not None
    if not sampling and (args.sampling_temperature is not None or args.seed is not None):
        option = "--sampling-temperature" if args.sampling_temperature is not None else "--seed"
        raise InputError(f"{option} applies to sampling; add --sampling-topk K.")
    if sampling and (args.num_beams or 1) > 1:
        raise InputError("--sampling-topk samples one hypothesis at a time: leave out --num-beams (or give 1).")
    args.num_beams = args.num_beams or (1 if sampling else 4)
    args.sampling_temperature = args.sampling_temperature or 1.0
    if not sampling and args.n_best > args.num_beams:
        raise InputError(f"--n-best {args.n_best} needs --num-beams {args.n_best} or more (the beam keeps the list).")
    if args.output_tokens and args.format != "jsonl":
        raise InputError("--output-tokens writes the tokens into JSON lines: add --format jsonl.")
    if args.score:
        given = [name for name, on in (("--n-best", args.n_best > 1), ("--target-prefix", args.target_prefix),
                                       ("--sampling-topk", sampling)) if on]  # fmt: skip
        if given:
            raise InputError(f"--score scores the given targets and translates nothing: drop {given[0]}.")
    elif args.input_format is not None:
        raise InputError("--input-format is --score's input format; plain translation reads one sentence a line.")


def required_features(args: argparse.Namespace) -> dict[str, str]:
    """The backend features the options ask for, each with the option that asks for it."""
    wanted = {}
    if args.n_best > 1:  # ranked, and printed with, their scores
        wanted[N_BEST] = wanted[SCORING] = "--n-best"
    if args.score or args.format == "jsonl":
        wanted[SCORING] = "--score" if args.score else "--format jsonl"
    if args.target_prefix:
        wanted[TARGET_PREFIX] = "--target-prefix"
    if args.sampling_topk is not None:
        wanted[SAMPLING] = "--sampling-topk"
    return wanted


def check_features(backend, args: argparse.Namespace) -> None:
    offered = getattr(backend, "features", frozenset())
    for feature, option in required_features(args).items():
        if feature not in offered:
            raise InputError(f"{option}: --backend {args.backend} has no {feature}; choose another backend.")


def load_backend(args: argparse.Namespace):
    if args.backend == "ctranslate2":
        return CTranslate2Backend(args.model, args.device, args.compute_type)
    if args.backend == "torch-compiled":
        return TorchCompiledBackend(args.model, args.device, torch_quantization(args.compute_type))
    return TransformersBackend(args.model, args.device)


def run(args: argparse.Namespace) -> str:
    """What the options ask for, as the text to write."""
    lines = read_lines(args.input)
    backend = load_backend(args)
    check_features(backend, args)
    if args.score:
        pairs = read_pairs(lines, args.input_format or "tsv", args.source_field, args.target_field)
        return score_output(pairs, score_pairs(backend, pairs, args), args)
    sources, prefixes = split_prefix_column(lines) if args.target_prefix else (lines, None)
    return translation_output(sources, prefixes, translate_hypotheses(backend, sources, args, prefixes), args)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        check_options(args)
        if args.output and not Path(args.output).resolve().parent.is_dir():
            raise InputError(f"--output: the folder of {args.output} does not exist.")
        text = run(args)
    except InputError as error:
        print(f"vaswani-translate: error: {error}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


__all__ = ["Decoding", "Hypothesis", "main", "score_pairs", "translate_hypotheses", "translate_lines"]
