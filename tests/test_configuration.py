"""VaswaniConfig: the paper's defaults, the presets' parameter counts, aliases, and every validation error."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig
from transformers.configuration_utils import logger as configuration_logger
from transformers.testing_utils import CaptureLogger

from conftest import tiny_config
from vaswani import VaswaniConfig, VaswaniForConditionalGeneration


def test_defaults_are_the_paper_base_model():
    config = VaswaniConfig()
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.vocab_size) == (8, 2048, 37000)
    assert (config.dropout, config.activation_function) == (0.1, "relu")
    assert (config.layer_norm_position, config.position_embedding_type) == ("post", "sinusoidal")
    assert config.scale_embedding and config.tie_word_embeddings and config.is_encoder_decoder


def test_the_loss_is_plain_cross_entropy_unless_a_recipe_asks_for_smoothing():
    """Like every transformers model; the paper's 0.1 (§5.4) comes with the presets (and vaswani-train)."""
    assert VaswaniConfig().label_smoothing == 0.0
    assert VaswaniConfig.base().label_smoothing == VaswaniConfig.big().label_smoothing == 0.1
    assert VaswaniConfig.big(label_smoothing=0.2).label_smoothing == 0.2
    assert VaswaniConfig.big().dropout == 0.3


def test_standard_names_alias_the_bart_fields():
    config = VaswaniConfig(d_model=64, encoder_layers=3, encoder_attention_heads=4)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 3, 4)
    config.hidden_size = 128
    assert config.d_model == 128


def count_parameters(config: VaswaniConfig) -> int:
    with torch.device("meta"):  # no memory, no initialisation: only the shapes
        model = VaswaniForConditionalGeneration(config)
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("preset, table_3_count", [(VaswaniConfig.base, 65e6), (VaswaniConfig.big, 213e6)])
def test_presets_match_table_3_parameter_counts(preset, table_3_count):
    count = count_parameters(preset())
    assert abs(count - table_3_count) / table_3_count < 0.05, f"{count / 1e6:.1f}M vs {table_3_count / 1e6:.0f}M"


def test_big_preset_takes_overrides():
    config = VaswaniConfig.big(vocab_size=8000, dropout=0.1)
    assert (config.d_model, config.encoder_attention_heads, config.vocab_size, config.dropout) == (1024, 16, 8000, 0.1)


def test_save_and_load_round_trip(tmp_path):
    config = tiny_config(layer_norm_position="pre", position_embedding_type="learned", activation_function="gelu")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VaswaniConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.layer_norm_position == "pre" and loaded.position_embedding_type == "learned"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": 30, "encoder_attention_heads": 4}, "d_model \\(30\\) must be divisible by encoder_attention_heads"),
        ({"d_model": 32, "decoder_attention_heads": 5}, "d_model \\(32\\) must be divisible by decoder_attention_heads"),
        ({"d_model": 33, "encoder_attention_heads": 3, "decoder_attention_heads": 3}, "must be even for sinusoidal"),
        ({"encoder_layers": 0}, "encoder_layers must be a positive integer"),
        ({"vocab_size": -1}, "vocab_size must be a positive integer"),
        ({"decoder_ffn_dim": 0}, "decoder_ffn_dim must be a positive integer"),
        ({"max_position_embeddings": 0}, "max_position_embeddings must be a positive integer"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
        ({"attention_dropout": -0.1}, "attention_dropout must be in \\[0, 1\\)"),
        ({"label_smoothing": 1.5}, "label_smoothing must be in \\[0, 1\\)"),
        ({"activation_function": "tanh"}, "Unknown activation_function 'tanh'; choose one of relu, gelu, silu"),
        ({"position_embedding_type": "rotary"}, "Unknown position_embedding_type 'rotary'"),
        ({"layer_norm_position": "sandwich"}, "Unknown layer_norm_position 'sandwich'"),
        ({"pad_token_id": 99}, "pad_token_id \\(99\\) is outside the vocabulary \\[0, 99\\)"),
        ({"decoder_start_token_id": -1}, "decoder_start_token_id \\(-1\\) is outside the vocabulary"),
    ],
)
def test_validation_names_the_field_and_the_fix(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tiny_config(**overrides)


def test_a_mask_id_outside_the_vocabulary_only_warns():
    """The model never reads it (only data collators do), so a vocabulary resized below it can still be saved."""
    with CaptureLogger(configuration_logger) as captured:
        config = tiny_config(mask_token_id=500)
    assert config.mask_token_id == 500 and "mask_token_id must be `None` or an integer within" in captured.out


def test_models_revalidate_a_config_changed_after_it_was_built():
    config = tiny_config()
    config.d_model = 30
    with pytest.raises(StrictDataclassClassValidationError, match="must be divisible"):
        VaswaniForConditionalGeneration(config)


def test_decoder_only_text_config_describes_the_decoder():
    config = tiny_config(encoder_layers=1, decoder_layers=3, decoder_attention_heads=8, is_decoder=True)
    config.is_encoder_decoder = False
    decoder_view = config.get_text_config(decoder=True)
    assert (decoder_view.num_hidden_layers, decoder_view.num_attention_heads) == (3, 8)
    assert config.get_text_config() is config  # callers that write to it (resize) see the real config
