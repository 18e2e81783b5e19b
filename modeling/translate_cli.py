"""`vaswani-translate`: translate a file, one sentence a line, with `generate()`, a compiled PyTorch decoder or
CTranslate2.

    vaswani-translate --model MODEL [--backend transformers|torch-compiled|ctranslate2] [--input FILE] [--output FILE]
                      [--num-beams N] [--length-penalty A] [--max-tokens N | --batch-size N] [--device DEVICE]
                      [--compute-type TYPE]

Reads `--input` (default: stdin) and writes one translation a line, in input order, to `--output` (default:
stdout); a progress bar goes to stderr. Sentences are tokenized once, sorted by length and batched by tokens
(`--max-tokens`, the padded source tokens of a batch) or by sentences (`--batch-size`), so that batches carry
little padding. Empty lines stay empty; a line longer than the model takes is truncated (one warning names how
many); translations never span lines. Each output stops at the paper's limit, its source length + 50 tokens (§6.1).

`--backend ctranslate2` takes a CTranslate2 folder (made by `vaswani-export-ctranslate2`) or a model folder (or Hub
id), which is converted once, in float32, and cached under `$HF_HOME/vaswani/ctranslate2/`, not in the model
folder: that may be read-only (a Hub snapshot, shared storage), and `vaswani-push` would upload the copy with the
model. A model saved again is converted again. `--compute-type int8` runs it quantized, CTranslate2's fastest CPU
path.

`--backend torch-compiled` decodes in PyTorch with a static cache and a decoding step compiled by `torch.compile`
(`vaswani.modeling.compiled_generation`): the tokens of `--backend transformers` in float32, up to about twice as
fast on a CPU once compiled. Each new shape (batch and source length, rounded up) compiles once, seconds to a minute on a
CPU, and is cached on disk by PyTorch for later runs. `--compute-type int8` decodes with int8 weights and activations
(torchao, `pip install 'vaswani[torchao]'`).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from vaswani.configuration import VaswaniConfig
from vaswani.modeling import ctranslate2_export
from vaswani.modeling.compiled_generation import CompiledGenerator
from vaswani.modeling.modeling_vaswani import VaswaniForConditionalGeneration
from vaswani.modeling.pipeline_vaswani import EXTRA_OUTPUT_TOKENS

DEFAULT_MAX_TOKENS = 4096
# What makes a converted copy stale: the weights, the config and the tokenizer it was made from.
SOURCE_FILES = ("config.json", "*.safetensors", "*.bin", *ctranslate2_export.TOKENIZER_FILES)
CONVERSION_FORMAT = 1  # bump when the export changes, so that cached conversions are redone


class InputError(Exception):
    """A problem with what the user gave (a path, an option): reported in one line, without a traceback."""


# ----------------------------------------------------------------------------------------------- backends


class TransformersBackend:
    """`VaswaniForConditionalGeneration.generate()` in PyTorch."""

    def __init__(self, model: str, device: str):
        model_dir = resolve_model(model)
        if is_ctranslate2_model(model_dir):
            raise InputError(f"--model: {model_dir} is a CTranslate2 model; translate it with --backend ctranslate2.")
        check_seq2seq(model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = VaswaniForConditionalGeneration.from_pretrained(model_dir).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model.config.check_tokenizer(self.tokenizer)
        learned = self.model.config.position_embedding_type == "learned"
        self.max_positions = self.model.config.max_position_embeddings if learned else None

    def translate(self, sources: list[list[int]], num_beams: int, length_penalty: float, max_new_tokens: int):
        inputs = self.tokenizer.pad({"input_ids": sources}, return_tensors="pt").to(self.device)
        beam_options = {"num_beams": num_beams, "length_penalty": length_penalty} if num_beams > 1 else {}
        with torch.inference_mode():
            generated = self.model.generate(**inputs, **beam_options, max_new_tokens=max_new_tokens, do_sample=False)
        return generated[:, 1:].tolist()  # without the decoder start token, as CTranslate2 returns them


class TorchCompiledBackend(TransformersBackend):
    """`CompiledGenerator`: a static cache and a compiled decoding step, the same tokens as `generate()`'s in float32;
    `quantization` "int8" decodes with torchao int8 weights and activations."""

    def __init__(self, model: str, device: str, quantization: str | None = None):
        super().__init__(model, device)
        try:
            self.generator = CompiledGenerator(self.model, quantization=quantization)
        except ImportError as error:
            raise InputError(f"--compute-type {quantization}: {error}") from error

    def translate(self, sources: list[list[int]], num_beams: int, length_penalty: float, max_new_tokens: int):
        inputs = self.tokenizer.pad({"input_ids": sources}, return_tensors="pt").to(self.device)
        generated = self.generator.generate(
            **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty
        )
        return generated[:, 1:].tolist()  # without the decoder start token, as the other backends return them


class CTranslate2Backend:
    """`ctranslate2.Translator` over an exported folder, or over a model folder converted once and cached."""

    def __init__(self, model: str, device: str, compute_type: str, threads: int = 0):
        if ctranslate2_export.ctranslate2 is None:
            raise InputError(ctranslate2_export.INSTALL_HINT)
        import ctranslate2

        model_dir = resolve_model(model)
        ct2_dir = model_dir if is_ctranslate2_model(model_dir) else cached_conversion(model_dir)
        device, _, index = device.partition(":")  # CTranslate2 takes "cuda:1" as device "cuda", index 1
        try:
            self.translator = ctranslate2.Translator(
                str(ct2_dir), device=device, device_index=int(index or 0), compute_type=compute_type,
                intra_threads=threads,  # 0: CTranslate2's default
            )
        except (RuntimeError, ValueError) as error:  # a decoder-only or encoder model, an unsupported compute type
            raise InputError(f"CTranslate2 cannot load {ct2_dir} as a translator: {error}") from error
        self.tokenizer = AutoTokenizer.from_pretrained(ct2_dir)
        self.max_positions = json.loads((ct2_dir / "config.json").read_text()).get("max_positions")

    def translate(self, sources: list[list[int]], num_beams: int, length_penalty: float, max_new_tokens: int):
        results = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(source) for source in sources],
            beam_size=num_beams, length_penalty=length_penalty, max_decoding_length=max_new_tokens,
            max_input_length=0,  # inputs are truncated here already, with a warning
        )  # fmt: skip
        return [self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]


def resolve_model(model: str) -> Path:
    try:
        return ctranslate2_export.resolve_model_dir(model)
    except OSError as error:
        raise InputError(f"--model: {error}") from error


def is_ctranslate2_model(folder: Path) -> bool:
    return (folder / "model.bin").is_file()


def check_seq2seq(model_dir: Path) -> None:
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise InputError(f"--model: {model_dir} holds no readable model config: {error}") from error
    if not isinstance(config, VaswaniConfig) or not config.is_encoder_decoder:
        kind = f"a {config.model_type!r} model" if not isinstance(config, VaswaniConfig) else "not an encoder-decoder"
        raise InputError(f"--model: {model_dir} is {kind}; vaswani-translate needs a Vaswani seq2seq model.")


def cached_conversion(model_dir: Path) -> Path:
    """The CTranslate2 conversion of `model_dir`, made on first use. A new model (other weights, config or
    tokenizer files) gets a new folder; a conversion is written to a temporary folder and renamed into place, so
    that an interrupted or concurrent run never leaves a half-written model to be reused."""
    check_seq2seq(model_dir)
    # HF_HOME read now, not at import, so that a caller (or a test) can redirect the cache; else hub's default.
    cache = Path(os.environ.get("HF_HOME", huggingface_hub.constants.HF_HOME)) / "vaswani" / "ctranslate2"
    target = cache / f"{model_dir.resolve().name}-{source_fingerprint(model_dir)}"
    if is_ctranslate2_model(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    print(f"Converting {model_dir} to CTranslate2 (once; cached in {target})", file=sys.stderr)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".converting-"))
    try:
        ctranslate2_export.export_ctranslate2(model_dir, staging, force=True)
        staging.rename(target)
    except OSError:
        if not is_ctranslate2_model(target):  # another run that converted it at the same time is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def source_fingerprint(model_dir: Path) -> str:
    files = sorted({path for pattern in SOURCE_FILES for path in model_dir.glob(pattern)})
    stamps = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps([CONVERSION_FORMAT, stamps]).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- batching


def read_lines(path: str | None) -> list[str]:
    """The lines of `path` (stdin for None or "-"), without their line ends. Split on "\\n" only, as `wc -l` and
    line-aligned corpora count lines: `str.splitlines` would also split at form feeds and Unicode separators."""
    if path in (None, "-"):
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError as error:
            raise InputError(f"--input: {path} does not exist.") from error
        except (IsADirectoryError, UnicodeDecodeError) as error:
            raise InputError(f"--input: cannot read {path} as UTF-8 text: {error}") from error
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line.removesuffix("\r") for line in lines]


def length_batches(lengths: dict[int, int], max_tokens: int | None, batch_size: int | None) -> Iterator[list[int]]:
    """Line indices in batches, longest sentences first (a batch too large for memory fails at once, not at the
    end): at most `batch_size` sentences, or at most `max_tokens` source tokens once padded to the longest."""
    order = sorted(lengths, key=lambda index: -lengths[index])
    batch: list[int] = []
    for index in order:
        too_many = batch_size is not None and len(batch) == batch_size
        too_long = max_tokens is not None and (len(batch) + 1) * lengths[batch[0] if batch else index] > max_tokens
        if batch and (too_many or too_long):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def tokenize(tokenizer, lines: dict[int, str], max_length: int) -> dict[int, list[int]]:
    """Token ids of each line, cut to `max_length` with one warning for all the lines that were longer."""
    indices = list(lines)
    if not indices:
        return {}
    encoded = tokenizer([lines[index] for index in indices], truncation=True, max_length=max_length)
    truncated = [index for index, encoding in zip(indices, encoded.encodings) if encoding.overflowing]
    if truncated:
        print(
            f"vaswani-translate: warning: {len(truncated)} line(s) longer than {max_length} tokens were truncated "
            f"(the first: line {truncated[0] + 1}).",
            file=sys.stderr,
        )
    return dict(zip(indices, encoded["input_ids"]))


def output_limit(source_length: int, max_positions: int | None) -> int:
    """Source length + 50 new tokens (§6.1), within the decoder's positions when they are learned."""
    return min(source_length + EXTRA_OUTPUT_TOKENS, max_positions or sys.maxsize)


def translate_lines(backend, lines: list[str], args: argparse.Namespace) -> list[str]:
    """The translation of each line, in order; empty (or blank) lines stay empty."""
    tokenizer = backend.tokenizer
    limits = [tokenizer.model_max_length, backend.max_positions or tokenizer.model_max_length]
    sources = tokenize(tokenizer, {index: line for index, line in enumerate(lines) if line.strip()}, min(limits))
    translations = [""] * len(lines)
    max_tokens = None if args.batch_size else args.max_tokens
    with tqdm(total=len(sources), unit="sent", desc="Translating", file=sys.stderr) as progress:
        for batch in length_batches({index: len(ids) for index, ids in sources.items()}, max_tokens, args.batch_size):
            limits = {index: output_limit(len(sources[index]), backend.max_positions) for index in batch}
            outputs = backend.translate(
                [sources[index] for index in batch], args.num_beams, args.length_penalty, max(limits.values())
            )
            # Each sentence's own limit, not its batch's: then how lines are batched does not change greedy outputs.
            outputs = [output[: limits[index]] for index, output in zip(batch, outputs)]
            for index, text in zip(batch, tokenizer.batch_decode(outputs, skip_special_tokens=True)):
                # A byte-level vocabulary can produce line breaks; one translation must stay one line.
                translations[index] = " ".join(text.splitlines())
            progress.update(len(batch))
    return translations


# ----------------------------------------------------------------------------------------------- command line


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vaswani-translate", description="Translate text, one sentence a line, with a Vaswani seq2seq model."
    )
    parser.add_argument("--model", required=True, help="A model folder or Hub id, or a CTranslate2 folder.")
    parser.add_argument("--backend", choices=("transformers", "torch-compiled", "ctranslate2"), default="transformers")
    parser.add_argument("--input", help="A UTF-8 text file, one sentence a line. Default: stdin.")
    parser.add_argument("--output", help="Where to write the translations, one a line. Default: stdout.")
    parser.add_argument("--num-beams", type=positive_int, default=4, help="Beam size (the paper's: 4). 1: greedy.")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="Beam scores are divided by length**A.")
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
        "torch-compiled: int8 (torchao). Default: float32.",
    )  # fmt: skip
    return parser.parse_args(argv)


def torch_quantization(compute_type: str) -> str | None:
    """`--compute-type` for `--backend torch-compiled`: default or float32 (None), or int8."""
    if compute_type in ("default", "float32"):
        return None
    if compute_type != "int8":
        raise InputError(f"--compute-type {compute_type}: --backend torch-compiled takes float32 or int8.")
    return compute_type


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        if args.output and not Path(args.output).resolve().parent.is_dir():
            raise InputError(f"--output: the folder of {args.output} does not exist.")
        lines = read_lines(args.input)
        if args.backend == "ctranslate2":
            backend = CTranslate2Backend(args.model, args.device, args.compute_type)
        elif args.backend == "torch-compiled":
            backend = TorchCompiledBackend(args.model, args.device, torch_quantization(args.compute_type))
        else:
            backend = TransformersBackend(args.model, args.device)
        translations = translate_lines(backend, lines, args)
    except InputError as error:
        print(f"vaswani-translate: error: {error}", file=sys.stderr)
        return 2
    text = "".join(translation + "\n" for translation in translations)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


__all__ = ["main", "translate_lines"]
