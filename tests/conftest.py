"""Shared fixtures: tiny configs and inputs, so that every model test runs in well under a second on a CPU."""

import pytest
import torch

from vaswani import VaswaniConfig

TINY = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
)


def tiny_config(**overrides) -> VaswaniConfig:
    """A two-layer model with the paper's architecture; dropout off unless asked, so outputs are deterministic."""
    return VaswaniConfig(**{**TINY, "dropout": 0.0, **overrides})


def random_ids(batch: int, length: int, generator_seed: int = 0, low: int = 5, high: int = TINY["vocab_size"]):
    """Token ids that avoid the special tokens (ids 0-4), so no id is accidentally padding or end-of-sequence."""
    generator = torch.Generator().manual_seed(generator_seed)
    return torch.randint(low, high, (batch, length), generator=generator)


# Tiny models gain nothing from intra-op threads, and pytest-xdist runs one process per core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def deterministic_seed():
    torch.manual_seed(0)
