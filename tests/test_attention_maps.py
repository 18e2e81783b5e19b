"""Attention maps: the weights of every kind of attention with their tokens, the PNG, the command line."""

import pytest
import torch
from matplotlib.image import imread

from conftest import tiny_kwargs
from vaswani import (
    VaswaniConfig,
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    causal_lm_tokenizer,
    train_tokenizer,
)
from vaswani.modeling.attention_maps import attention_maps, load_head, main, plot_attention
from vaswani.training.corpus import load_parallel_corpus

SOURCE, TARGET = "In the beginning God created", "En el principio"


@pytest.fixture(scope="module")
def tokenizer():
    pairs = load_parallel_corpus()["train"].select(range(300))
    return train_tokenizer([*pairs["en"], *pairs["es"]], vocab_size=300, model_max_length=64, show_progress=False)


def tiny(model_class, tokenizer):
    """Two layers of three heads (so that a transposed grid would show), in training mode with sdpa, as it comes."""
    torch.manual_seed(0)
    # The paper's dropout, not tiny_kwargs' 0: maps taken in training mode must still be those of eval mode.
    sizes = tiny_kwargs(vocab_size=len(tokenizer), d_model=24, heads=3, ffn_dim=48, max_position_embeddings=256)
    config = VaswaniConfig.from_tokenizer(tokenizer, **{**sizes, "dropout": 0.1})
    return model_class(config)


def labels_of(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([token]).strip() or "␣" for token in ids]


def tokens_of(tokenizer, text: str) -> list[str]:
    return labels_of(tokenizer, tokenizer(text)["input_ids"])


def test_seq2seq_has_three_maps_of_layers_by_heads_with_their_tokens(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    encoder, decoder, cross = attention_maps(model, tokenizer, SOURCE, TARGET)
    source, target = tokens_of(tokenizer, SOURCE), ["<s>", *tokens_of(tokenizer, TARGET)[:-1]]  # <s> y, not y </s>
    assert (encoder.query_tokens, encoder.key_tokens) == (source, source)
    assert (decoder.query_tokens, decoder.key_tokens) == (target, target)
    assert (cross.query_tokens, cross.key_tokens) == (target, source)
    assert encoder.weights.shape == (2, 3, len(source), len(source))
    assert cross.weights.shape == (2, 3, len(target), len(source))
    for attention in (encoder, decoder, cross):
        torch.testing.assert_close(attention.weights.sum(-1), torch.ones(attention.weights.shape[:-1]))
    assert torch.all(decoder.weights.triu(diagonal=1) == 0)  # no position sees a later one
    assert torch.all(encoder.weights.triu(diagonal=1).sum((-2, -1)) > 0)  # the encoder sees both directions


def test_weights_are_the_models_own_and_its_settings_come_back(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    assert model.training and model.config._attn_implementation == "sdpa"
    encoder, _, cross = attention_maps(model, tokenizer, SOURCE, TARGET)
    assert model.training and model.config._attn_implementation == "sdpa"
    model.eval().set_attn_implementation("eager")
    inputs = tokenizer(SOURCE, return_tensors="pt")
    labels = tokenizer(text_target=TARGET, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        outputs = model(**inputs, labels=labels, output_attentions=True)
    torch.testing.assert_close(encoder.weights, torch.cat(outputs.encoder_attentions))
    torch.testing.assert_close(cross.weights, torch.cat(outputs.cross_attentions))


def test_without_a_target_the_decoder_reads_the_models_own_translation(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer).eval()
    _, decoder, _ = attention_maps(model, tokenizer, SOURCE)
    inputs = tokenizer(SOURCE, return_tensors="pt")
    greedy = model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=inputs["input_ids"].shape[1] + 50)
    ends = greedy[0, -1] == tokenizer.eos_token_id
    assert decoder.query_tokens == labels_of(tokenizer, greedy[0, :-1] if ends else greedy[0])  # <s> y, without </s>
    assert decoder.query_tokens[0] == "<s>" and len(decoder.query_tokens) > 1


@pytest.mark.parametrize(
    "model_class, title",
    [(VaswaniForMaskedLM, "encoder self-attention"), (VaswaniForSequenceClassification, "encoder self-attention"),
     (VaswaniForCausalLM, "decoder self-attention")],
)  # fmt: skip
def test_single_stack_heads_have_one_map(model_class, title, tokenizer):
    model_tokenizer = causal_lm_tokenizer(tokenizer) if model_class is VaswaniForCausalLM else tokenizer
    (attention,) = attention_maps(tiny(model_class, tokenizer), model_tokenizer, SOURCE)
    assert attention.title == title and attention.query_tokens == tokens_of(model_tokenizer, SOURCE)
    assert attention.weights.shape[:2] == (2, 3)
    assert bool(torch.all(attention.weights.triu(diagonal=1) == 0)) == (model_class is VaswaniForCausalLM)
    with pytest.raises(ValueError, match="target_text needs an encoder-decoder model"):
        attention_maps(tiny(model_class, tokenizer), model_tokenizer, SOURCE, TARGET)


def test_png_holds_a_grid_per_kind_of_attention(tokenizer, tmp_path):
    translation_model = tiny(VaswaniForConditionalGeneration, tokenizer)
    seq2seq = plot_attention(translation_model, tokenizer, SOURCE, TARGET, tmp_path / "mt.png")
    encoder = plot_attention(tiny(VaswaniForMaskedLM, tokenizer), tokenizer, SOURCE, out=tmp_path / "deep" / "mlm.png")
    seq2seq_height, seq2seq_width = imread(seq2seq).shape[:2]
    encoder_height, encoder_width = imread(encoder).shape[:2]
    assert seq2seq_width == encoder_width  # three heads across
    assert seq2seq_height > 2.5 * encoder_height  # three maps stacked, against one


def test_command_line_draws_a_saved_model(tokenizer, tmp_path, capsys):
    tiny(VaswaniForConditionalGeneration, tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "map.png"
    assert main([str(tmp_path / "model"), "--text", SOURCE, "--target", TARGET, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and imread(out).shape[0] > 100
    assert isinstance(load_head(str(tmp_path / "model")), VaswaniForConditionalGeneration)
