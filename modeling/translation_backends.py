"""The decoding backends of `vaswani-translate` and `benchmarks/inference.py`: `generate()` in PyTorch
(`TransformersBackend`), a compiled PyTorch decoder (`TorchCompiledBackend`, `compiled_generation.py`) and
CTranslate2 (`CTranslate2Backend`), with the model folders they read: resolved, checked, and for CTranslate2
converted once and cached.

A backend has `translate(sources, num_beams, length_penalty, max_new_tokens)` (the best hypothesis of each source,
as token ids) and `tokenizer`, `max_positions`; what it offers beyond that it lists in `features` (`search()` for
n-best lists, target prefixes and sampling; `score()`).
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub.constants
import torch
from transformers import AutoConfig, AutoTokenizer

from vaswani.configuration import VaswaniConfig
from vaswani.configuration.errors import InputError
from vaswani.modeling import ctranslate2_export
from vaswani.modeling.compiled_generation import CompiledGenerator
from vaswani.modeling.modeling_vaswani import VaswaniForConditionalGeneration

# What makes a converted copy stale: the weights, the config and the tokenizer it was made from.
SOURCE_FILES = ("config.json", "*.safetensors", "*.bin", *ctranslate2_export.TOKENIZER_FILES)
CONVERSION_FORMAT = 1  # bump when the export changes, so that cached conversions are redone


# What a backend may offer beyond `translate()`, the best hypothesis by beam search or greedy decoding. A backend
# lists the ones it has in `features` (none if it has no such attribute); vaswani-translate refuses an option whose
# feature the chosen backend lacks, naming both.
N_BEST = "n-best lists"  # search(): several hypotheses per source
SCORING = "scores"  # score(): each target token's log-probability (--score, and the scores of --format jsonl)
TARGET_PREFIX = "target prefixes"  # search(): each hypothesis starts with its given prefix
SAMPLING = "sampling"  # search() with Decoding.sampling_topk, and set_seed()
ALL_FEATURES = frozenset({N_BEST, SCORING, TARGET_PREFIX, SAMPLING})


@dataclass(frozen=True)
class Decoding:
    """How `search()` finds hypotheses: beam search, or random sampling when `sampling_topk` is set (0: from the
    whole vocabulary), one token at a time."""

    num_beams: int = 4
    length_penalty: float = 1.0
    num_hypotheses: int = 1
    sampling_topk: int | None = None
    sampling_temperature: float = 1.0


class TransformersBackend:
    """`VaswaniForConditionalGeneration.generate()` in PyTorch."""

    features = ALL_FEATURES

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

    def search(self, sources: list[list[int]], prefixes: list[list[int]], decoding: Decoding, max_lengths: list[int]):
        """`decoding.num_hypotheses` token-id lists per source, each starting with its prefix, best first; each at
        most about `max_lengths` tokens long, the prefix included (the caller cuts them to exactly that)."""
        by_prefix_length = defaultdict(list)  # generate() takes one decoder prompt length per batch
        for row, prefix in enumerate(prefixes):
            by_prefix_length[len(prefix)].append(row)
        count, results = decoding.num_hypotheses, [[] for _ in sources]
        for rows in by_prefix_length.values():
            inputs = self.tokenizer.pad({"input_ids": [sources[row] for row in rows]}, return_tensors="pt")
            start = self.model.config.decoder_start_token_id
            prompts = torch.tensor([[start, *prefixes[row]] for row in rows])
            with torch.inference_mode():
                generated = self.model.generate(
                    **inputs.to(self.device), decoder_input_ids=prompts.to(self.device),
                    max_new_tokens=max(max_lengths[row] - len(prefixes[row]) for row in rows),
                    num_return_sequences=count, **self.search_options(decoding),
                )  # fmt: skip
            generated = generated[:, 1:].tolist()  # (rows * count, length), each row's hypotheses together
            for position, row in enumerate(rows):
                results[row] = generated[position * count : (position + 1) * count]
        return results

    @staticmethod
    def search_options(decoding: Decoding) -> dict:
        if decoding.sampling_topk is not None:
            return {
                "do_sample": True, "num_beams": 1, "top_k": decoding.sampling_topk, "top_p": 1.0,
                "temperature": decoding.sampling_temperature,
            }  # fmt: skip
        beam = {"length_penalty": decoding.length_penalty} if decoding.num_beams > 1 else {}
        return {"do_sample": False, "num_beams": decoding.num_beams, **beam}

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """log p(token | source, the tokens before it) of every target token, the end token (which each target
        ends with) included: one teacher-forced forward pass, as generate() scores the tokens it picks."""
        inputs = self.tokenizer.pad({"input_ids": sources}, return_tensors="pt").to(self.device)
        width = max(len(target) for target in targets)
        labels = torch.tensor([target + [-100] * (width - len(target)) for target in targets], device=self.device)
        with torch.inference_mode():
            logits = self.model(**inputs, labels=labels).logits
        log_probs = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return [row[: len(target)].tolist() for row, target in zip(log_probs, targets)]

    def set_seed(self, seed: int) -> None:
        torch.manual_seed(seed)  # every device's generator


class TorchCompiledBackend(TransformersBackend):
    """`CompiledGenerator`: a static cache and a compiled decoding step, the same tokens as `generate()`'s in float32;
    `quantization` "int8" decodes with int8 weights (`Int8WeightLinear`). The best translation is compiled; n-best
    lists, prefixes, sampling and scores run as the transformers backend runs them (`generate()`, a forward pass)."""

    def __init__(self, model: str, device: str, quantization: str | None = None):
        super().__init__(model, device)
        self.generator = CompiledGenerator(self.model, quantization=quantization)

    def translate(self, sources: list[list[int]], num_beams: int, length_penalty: float, max_new_tokens: int):
        inputs = self.tokenizer.pad({"input_ids": sources}, return_tensors="pt").to(self.device)
        generated = self.generator.generate(
            **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty
        )
        return generated[:, 1:].tolist()  # without the decoder start token, as the other backends return them


class CTranslate2Backend:
    """`ctranslate2.Translator` over an exported folder, or over a model folder converted once and cached."""

    features = ALL_FEATURES

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

    def search(self, sources: list[list[int]], prefixes: list[list[int]], decoding: Decoding, max_lengths: list[int]):
        """`decoding.num_hypotheses` token-id lists per source, each starting with its prefix, best first; each at
        most about `max_lengths` tokens long, the prefix included (the caller cuts them to exactly that)."""
        if decoding.sampling_topk is not None:
            options = {"beam_size": 1, "sampling_topk": decoding.sampling_topk,
                       "sampling_temperature": decoding.sampling_temperature}  # fmt: skip
        else:
            options = {"beam_size": decoding.num_beams, "length_penalty": decoding.length_penalty}
        results = self.translator.translate_batch(
            self.as_tokens(sources), target_prefix=[self.as_tokens([prefix])[0] or None for prefix in prefixes],
            num_hypotheses=decoding.num_hypotheses, max_input_length=0, max_decoding_length=max(max_lengths),
            **options,
        )  # fmt: skip
        return [[self.tokenizer.convert_tokens_to_ids(tokens) for tokens in result.hypotheses] for result in results]

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """log p(token | source, the tokens before it) of every target token, the end token (which each target
        ends with) included: CTranslate2's `score_batch`, which appends the end token itself."""
        results = self.translator.score_batch(
            self.as_tokens(sources), self.as_tokens([target[:-1] for target in targets]), max_input_length=0
        )
        return [list(result.log_probs) for result in results]

    def set_seed(self, seed: int) -> None:
        import ctranslate2

        ctranslate2.set_random_seed(seed)

    def as_tokens(self, id_lists: list[list[int]]) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(ids) for ids in id_lists]


def resolve_model(model: str) -> Path:
    try:
        return ctranslate2_export.resolve_model_dir(model)
    except (OSError, ValueError) as error:  # ValueError: weights only as pickles, or damaged
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


def torch_quantization(compute_type: str) -> str | None:
    """`--compute-type` for `--backend torch-compiled`: default or float32 (None), or int8."""
    if compute_type in ("default", "float32"):
        return None
    if compute_type != "int8":
        raise InputError(f"--compute-type {compute_type}: --backend torch-compiled takes float32 or int8.")
    return compute_type
