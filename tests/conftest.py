"""Shared fixtures: tiny configs and inputs, so that every model test runs in well under a second on a CPU."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vaswani import VaswaniConfig

TINY = dict(vocab_size=99, d_model=32, layers=2, heads=4, ffn_dim=64, max_position_embeddings=64)
BOTH_STACKS = {"layers": "{}_layers", "heads": "{}_attention_heads", "ffn_dim": "{}_ffn_dim"}


def tiny_kwargs(**overrides) -> dict:
    """VaswaniConfig keyword arguments of a tiny model; `layers`, `heads` and `ffn_dim` set both stacks at once
    (`encoder_*`/`decoder_*` still override one stack). Dropout is off unless asked, so outputs are deterministic."""
    merged = {**TINY, "dropout": 0.0, **overrides}
    kwargs = {name: value for name, value in merged.items() if name not in BOTH_STACKS}
    for short, pattern in BOTH_STACKS.items():
        for stack in ("encoder", "decoder"):
            kwargs.setdefault(pattern.format(stack), merged[short])
    return kwargs


def tiny_config(**overrides) -> VaswaniConfig:
    """A two-layer model with the paper's architecture (see `tiny_kwargs`)."""
    return VaswaniConfig(**tiny_kwargs(**overrides))


def tiny_model(model_class, tokenizer, **overrides):
    """A tiny `model_class` with `tokenizer`'s vocabulary and special ids, seeded, in eval mode, dropout off."""
    torch.manual_seed(0)
    config = VaswaniConfig.from_tokenizer(tokenizer, **tiny_kwargs(vocab_size=len(tokenizer), **overrides))
    return model_class(config).eval()


def corpus_tokenizer(model_max_length: int = 64, pairs: int = 300):
    """A 300-token BPE trained on the first `pairs` English-Spanish pairs of the embedded corpus (about a second)."""
    from vaswani import train_tokenizer
    from vaswani.training.corpus import load_parallel_corpus

    rows = load_parallel_corpus()["train"].select(range(pairs))
    return train_tokenizer([*rows["en"], *rows["es"]], vocab_size=300, model_max_length=model_max_length,
                           show_progress=False)  # fmt: skip


def write_pairs_file(folder: Path, count: int = 80) -> Path:
    """The first `count` English-Spanish pairs of the embedded corpus as a local JSON-lines dataset (no test split)."""
    from vaswani.training.corpus import load_parallel_corpus

    pairs = load_parallel_corpus()["train"].select(range(count))
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({"en": row["en"], "es": row["es"]}) + "\n" for row in pairs))
    return path


def save_pairs_tokenizer(pairs_file: Path, folder: Path) -> Path:
    """A 300-token tokenizer trained on both languages of `pairs_file`, saved to `folder` (the runs' --tokenizer)."""
    from vaswani import train_tokenizer

    texts = [text for line in pairs_file.read_text().splitlines() for text in json.loads(line).values()]
    train_tokenizer(texts, vocab_size=300, model_max_length=48, show_progress=False).save_pretrained(folder)
    return folder


def import_script(path: Path):
    """A script of the repository that is not part of the package (a benchmark, a maintainer script) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_ids(batch: int, length: int, generator_seed: int = 0, low: int = 5, high: int = TINY["vocab_size"]):
    """Token ids that avoid the special tokens (ids 0-4), so no id is accidentally padding or end-of-sequence."""
    generator = torch.Generator().manual_seed(generator_seed)
    return torch.randint(low, high, (batch, length), generator=generator)


# Tiny models gain nothing from intra-op threads, and pytest-xdist runs one process per core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def deterministic_seed():
    torch.manual_seed(0)
