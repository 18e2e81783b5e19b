"""Behaviour of the model family: shapes, masks, caches, the views' shared parameters, save/load, options, errors."""

import functools
import os
import re
import traceback
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    CompileConfig,
)

from conftest import random_ids, tiny_config
from vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    VaswaniModel,
)

ALL_HEADS = [VaswaniForConditionalGeneration, VaswaniForMaskedLM, VaswaniForCausalLM, VaswaniForSequenceClassification]


def model_inputs(model_class, batch=2, length=7, seed=0):
    """Inputs every head accepts: source ids with a padded second row, plus decoder ids for the seq2seq head."""
    input_ids = random_ids(batch, length, seed)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, length - 2 :] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if model_class in (VaswaniForConditionalGeneration, VaswaniModel):
        inputs["decoder_input_ids"] = random_ids(batch, 5, seed + 1)
    return inputs


def eval_model(model_class, **overrides):
    return model_class(tiny_config(**overrides)).eval()


# ----------------------------------------------------------------------------------------------- shapes and views


@pytest.mark.parametrize(
    "model_class, expected_shape",
    [
        (VaswaniForConditionalGeneration, (2, 5, 99)),
        (VaswaniForMaskedLM, (2, 7, 99)),
        (VaswaniForCausalLM, (2, 7, 99)),
        (VaswaniForSequenceClassification, (2, 3)),
    ],
)
def test_output_shape_per_head(model_class, expected_shape):
    model = model_class(tiny_config(num_labels=3)).eval()
    assert model(**model_inputs(model_class)).logits.shape == expected_shape


def test_bare_model_builds_the_stacks_its_view_asks_for():
    seq2seq = VaswaniModel(tiny_config())
    encoder_only = VaswaniModel(tiny_config(is_encoder_decoder=False))
    decoder_only = VaswaniModel(tiny_config(is_encoder_decoder=False, is_decoder=True))
    assert hasattr(seq2seq, "encoder") and hasattr(seq2seq, "decoder")
    assert hasattr(encoder_only, "encoder") and not hasattr(encoder_only, "decoder")
    assert hasattr(decoder_only, "decoder") and not hasattr(decoder_only, "encoder")
    output = seq2seq(**model_inputs(VaswaniModel))
    assert output.last_hidden_state.shape == (2, 5, 32) and output.encoder_last_hidden_state.shape == (2, 7, 32)
    assert encoder_only(**model_inputs(VaswaniForMaskedLM)).last_hidden_state.shape == (2, 7, 32)
    assert decoder_only(**model_inputs(VaswaniForCausalLM)).last_hidden_state.shape == (2, 7, 32)


def parameter_names(model) -> set[str]:
    return {name for name, _ in model.named_parameters()}


def test_every_view_uses_the_seq2seq_parameter_names():
    seq2seq = parameter_names(VaswaniForConditionalGeneration(tiny_config(tie_word_embeddings=False)))
    masked_lm = parameter_names(VaswaniForMaskedLM(tiny_config(tie_word_embeddings=False)))
    causal_lm = parameter_names(VaswaniForCausalLM(tiny_config(tie_word_embeddings=False)))
    assert masked_lm < seq2seq and causal_lm < seq2seq
    assert {name.split(".")[1] for name in masked_lm if name.startswith("model.")} == {"shared", "encoder"}
    assert {name.split(".")[1] for name in causal_lm if name.startswith("model.")} == {"shared", "decoder"}
    assert not any("cross_attn" in name for name in causal_lm)  # unused weights would also break DDP


def test_views_do_not_mutate_the_callers_config():
    config = tiny_config()
    VaswaniForCausalLM(config)
    VaswaniForMaskedLM(config)
    assert config.is_encoder_decoder and not config.is_decoder


def test_masked_lm_checkpoint_warm_starts_the_encoder(tmp_path):
    masked_lm = VaswaniForMaskedLM(tiny_config())
    masked_lm.save_pretrained(tmp_path)
    seq2seq, info = VaswaniForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith("model.decoder.") for key in info["missing_keys"])
    assert not info["unexpected_keys"]
    for name, parameter in masked_lm.model.encoder.state_dict().items():
        assert torch.equal(parameter, seq2seq.model.encoder.state_dict()[name]), name
    assert torch.equal(seq2seq.model.shared.weight, masked_lm.model.shared.weight)
    assert seq2seq.lm_head.weight is seq2seq.model.shared.weight


def test_causal_lm_checkpoint_warm_starts_the_decoder_all_but_cross_attention(tmp_path):
    causal_lm = VaswaniForCausalLM(tiny_config())
    causal_lm.save_pretrained(tmp_path)
    seq2seq, info = VaswaniForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    new_decoder_keys = {key for key in info["missing_keys"] if key.startswith("model.decoder.")}
    assert new_decoder_keys and all(".cross_attn" in key for key in new_decoder_keys)
    assert all(key.startswith(("model.encoder.", "model.decoder.")) for key in info["missing_keys"])
    decoder_state = seq2seq.model.decoder.state_dict()
    for name, parameter in causal_lm.model.decoder.state_dict().items():
        assert torch.equal(parameter, decoder_state[name]), name


def test_seq2seq_checkpoint_loads_into_the_single_stack_views(tmp_path):
    seq2seq = VaswaniForConditionalGeneration(tiny_config()).eval()
    seq2seq.save_pretrained(tmp_path)
    masked_lm = VaswaniForMaskedLM.from_pretrained(tmp_path).eval()
    causal_lm = VaswaniForCausalLM.from_pretrained(tmp_path)
    ids = random_ids(1, 6)
    assert torch.equal(masked_lm(ids).logits, seq2seq.lm_head(seq2seq.model.encoder(ids).last_hidden_state))
    assert not hasattr(causal_lm.model.decoder.layers[0], "cross_attn")


# ----------------------------------------------------------------------------------------------- attention and masks


def pad(ids: torch.Tensor, count: int, side: str, pad_id: int = 0):
    """Pad one row with `count` pad tokens on `side`; returns ids and the 2-D mask (1 = real token)."""
    padding = torch.full((ids.shape[0], count), pad_id)
    mask = torch.cat([torch.ones_like(ids), torch.zeros_like(padding)], dim=1)
    if side == "left":
        return torch.cat([padding, ids], dim=1), mask.flip(1)
    return torch.cat([ids, padding], dim=1), mask


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("model_class", ALL_HEADS)
def test_eager_and_sdpa_agree_with_padding(model_class, side):
    model = eval_model(model_class)
    short, mask_short = pad(random_ids(1, 5, 1), 3, side)
    batch = {
        "input_ids": torch.cat([random_ids(1, 8, 2), short]),
        "attention_mask": torch.cat([torch.ones(1, 8, dtype=torch.long), mask_short]),
    }
    if model_class is VaswaniForConditionalGeneration:
        batch["decoder_input_ids"] = random_ids(2, 4, 3)
    logits = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        logits[implementation] = model(**batch).logits
    if model_class in (VaswaniForMaskedLM, VaswaniForCausalLM):  # logits per input position: compare real ones
        real = batch["attention_mask"].bool()
        logits = {implementation: per_position[real] for implementation, per_position in logits.items()}
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", [VaswaniForMaskedLM, VaswaniForCausalLM, VaswaniForConditionalGeneration])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_positions(model_class, side):
    model = eval_model(model_class)
    ids = random_ids(1, 6)
    padded, mask = pad(ids, 3, side)
    extra = {"decoder_input_ids": random_ids(1, 4, 1)} if model_class is VaswaniForConditionalGeneration else {}
    unpadded_logits = model(ids, **extra).logits
    padded_logits = model(padded, attention_mask=mask, **extra).logits
    if model_class is not VaswaniForConditionalGeneration:
        padded_logits = padded_logits[mask.bool()].unsqueeze(0)
    torch.testing.assert_close(padded_logits, unpadded_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", [VaswaniForCausalLM, VaswaniForConditionalGeneration])
def test_a_future_token_cannot_change_past_logits(model_class):
    model = eval_model(model_class)
    tokens = random_ids(1, 6)
    changed = tokens.clone()
    changed[0, 4] = 5 if tokens[0, 4] != 5 else 6
    if model_class is VaswaniForCausalLM:
        before, after = model(tokens).logits, model(changed).logits
    else:
        source = random_ids(1, 5, 1)
        before = model(source, decoder_input_ids=tokens).logits
        after = model(source, decoder_input_ids=changed).logits
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_the_encoder_sees_both_directions():
    model = eval_model(VaswaniForMaskedLM)
    tokens = random_ids(1, 6)
    changed = tokens.clone()
    changed[0, -1] = 5 if tokens[0, -1] != 5 else 6
    assert not torch.allclose(model(tokens).logits[:, 0], model(changed).logits[:, 0])


def test_source_padding_is_masked_in_cross_attention():
    model = eval_model(VaswaniForConditionalGeneration)
    source, target = random_ids(1, 5), random_ids(1, 4, 1)
    padded, mask = pad(source, 2, "right")
    garbage = padded.clone()
    garbage[0, -2:] = 50  # non-pad ids behind the mask must not matter either
    reference = model(padded, attention_mask=mask, decoder_input_ids=target).logits
    torch.testing.assert_close(model(garbage, attention_mask=mask, decoder_input_ids=target).logits, reference)


def test_output_attentions_and_hidden_states():
    model = eval_model(VaswaniForConditionalGeneration, encoder_layers=2, decoder_layers=3)
    output = model(**model_inputs(VaswaniForConditionalGeneration), output_attentions=True, output_hidden_states=True)
    assert [tuple(weights.shape) for weights in output.encoder_attentions] == [(2, 4, 7, 7)] * 2
    assert [tuple(weights.shape) for weights in output.decoder_attentions] == [(2, 4, 5, 5)] * 3
    assert [tuple(weights.shape) for weights in output.cross_attentions] == [(2, 4, 5, 7)] * 3
    assert len(output.encoder_hidden_states) == 3 and len(output.decoder_hidden_states) == 4
    torch.testing.assert_close(output.encoder_hidden_states[-1], output.encoder_last_hidden_state)
    # Weights are probabilities; the padded source positions of row 2 get none of the cross-attention.
    torch.testing.assert_close(output.cross_attentions[0].sum(-1), torch.ones(2, 4, 5))
    assert output.cross_attentions[0][1, :, :, -2:].abs().max() == 0


def test_output_attentions_under_sdpa_equal_eager_weights():
    model = eval_model(VaswaniForCausalLM)
    inputs = model_inputs(VaswaniForCausalLM)
    sdpa_weights = model(**inputs, output_attentions=True).attentions
    model.set_attn_implementation("eager")
    eager_weights = model(**inputs, output_attentions=True).attentions
    for sdpa, eager in zip(sdpa_weights, eager_weights):
        torch.testing.assert_close(sdpa, eager)


@pytest.mark.parametrize("model_class", ALL_HEADS)
def test_return_dict_false_gives_the_same_tensors_as_a_tuple(model_class):
    model = eval_model(model_class)
    inputs = model_inputs(model_class)
    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], model(**inputs).logits)


# ----------------------------------------------------------------------------------------------- caches and generation


def test_cross_attention_keys_and_values_are_computed_once_per_generation():
    model = eval_model(VaswaniForConditionalGeneration)
    calls = []
    for layer in model.model.decoder.layers:
        layer.cross_attn.kv_proj.register_forward_hook(lambda *args: calls.append(1))
    model.generate(random_ids(2, 6), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert len(calls) == len(model.model.decoder.layers)


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_and_uncached_decoding_agree(model_class, num_beams):
    model = eval_model(model_class)
    inputs = model_inputs(model_class)
    inputs.pop("decoder_input_ids", None)
    settings = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=num_beams)
    settings.update(output_scores=True, return_dict_in_generate=True)
    cached = model.generate(**inputs, **settings)
    uncached = model.generate(**inputs, **settings, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    for cached_scores, uncached_scores in zip(cached.scores, uncached.scores):
        finite = torch.isfinite(cached_scores)
        torch.testing.assert_close(cached_scores[finite], uncached_scores[finite], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
def test_sampling_is_reproducible_and_respects_length(model_class):
    model = eval_model(model_class)
    inputs = model_inputs(model_class)
    inputs.pop("decoder_input_ids", None)
    torch.manual_seed(1)
    first = model.generate(**inputs, do_sample=True, top_k=20, max_new_tokens=5, min_new_tokens=5)
    torch.manual_seed(1)
    second = model.generate(**inputs, do_sample=True, top_k=20, max_new_tokens=5, min_new_tokens=5)
    assert torch.equal(first, second)
    prompt_length = 1 if model_class is VaswaniForConditionalGeneration else inputs["input_ids"].shape[1]
    assert first.shape == (2, prompt_length + 5)


def test_left_padded_causal_lm_batch_generates_as_each_prompt_alone():
    model = eval_model(VaswaniForCausalLM)
    long_prompt, short_prompt = random_ids(1, 6, 1), random_ids(1, 3, 2)
    padded_short, short_mask = pad(short_prompt, 3, "left")
    batch = torch.cat([long_prompt, padded_short])
    mask = torch.cat([torch.ones(1, 6, dtype=torch.long), short_mask])
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    together = model.generate(batch, attention_mask=mask, **settings)
    assert torch.equal(together[0], model.generate(long_prompt, **settings)[0])
    assert torch.equal(together[1, 3:], model.generate(short_prompt, **settings)[0])


def generation_inputs(model_class) -> dict:
    """Two prompts, the second left-padded, to generate a fixed number of tokens greedily."""
    input_ids, attention_mask = random_ids(2, 6, 3), torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, :2] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, min_new_tokens=8, do_sample=False)


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_generates_what_the_dynamic_cache_generates(model_class, num_beams):
    model = eval_model(model_class)
    inputs = generation_inputs(model_class) | {"num_beams": num_beams}
    dynamic = model.generate(**inputs)
    assert torch.equal(model.generate(**inputs, cache_implementation="static"), dynamic)


@pytest.mark.slow  # compiling takes 15-35 s per view on a CPU
@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
def test_compiled_static_cache_generation_equals_the_dynamic_cache(model_class):
    """transformers compiles the decoding step (fullgraph: any graph break fails) when the cache is static and a
    compile config is given; on a CPU only when asked to (`_compile_all_devices`)."""
    model = eval_model(model_class)
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True
    inputs = generation_inputs(model_class)
    compiled = model.generate(**inputs, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled, model.generate(**inputs))
    assert getattr(model, "_compiled_call", None) is not None  # compiled, not run eagerly after a warning


class HostReads(TorchDispatchMode):
    """Records where our file reads a tensor back to the host (`.item()`, `bool()`, `int()`, `nonzero`), which
    waits for the device's queue to drain."""

    def __init__(self):
        super().__init__()
        self.places = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            callers = [frame for frame in traceback.extract_stack()[:-1] if f"{os.sep}torch{os.sep}" not in frame.filename]
            if callers[-1].filename.endswith("modeling_vaswani.py"):  # not transformers' mask helpers
                self.places.append(f"{callers[-1].name}:{callers[-1].lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
def test_a_decoding_step_reads_nothing_back_to_the_host(model_class):
    """Inputs are checked where they enter (the first step): a decoding step with a cache only queues work.
    (transformers' sdpa mask helpers still read one flag per step unless compiled; eager reads none.)"""
    model = eval_model(model_class, attn_implementation="eager")
    inputs = generation_inputs(model_class)
    mask = inputs["attention_mask"]
    with HostReads() as first_step:
        if model_class is VaswaniForCausalLM:
            outputs = model(inputs["input_ids"], attention_mask=mask)
            step = {"input_ids": random_ids(2, 1, 4), "attention_mask": torch.cat([mask, mask[:, -1:]], dim=1)}
        else:
            outputs = model(inputs["input_ids"], attention_mask=mask, decoder_input_ids=random_ids(2, 2, 5))
            step = {"decoder_input_ids": random_ids(2, 1, 4), "attention_mask": mask,
                    "encoder_outputs": (outputs.encoder_last_hidden_state,)}  # fmt: skip
    assert first_step.places  # the vocabulary and padding checks: the probe sees them
    with HostReads() as decoding_step:
        model(**step, cache=outputs.cache)
    assert decoding_step.places == []


def test_beam_search_returns_the_requested_sequences():
    model = eval_model(VaswaniForConditionalGeneration)
    generated = model.generate(random_ids(2, 6), num_beams=4, num_return_sequences=2, max_new_tokens=4)
    assert generated.shape[0] == 4 and (generated[:, 0] == model.config.decoder_start_token_id).all()


# ----------------------------------------------------------------------------------------------- losses


def test_labels_of_minus_100_are_ignored():
    model = eval_model(VaswaniForConditionalGeneration)
    source, labels = random_ids(2, 6), random_ids(2, 5, 1)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    logits = model(source, decoder_input_ids=decoder_input_ids).logits
    ignored = labels.clone()
    ignored[:, 3:] = -100
    expected = torch.nn.functional.cross_entropy(logits[:, :3].reshape(-1, 99), labels[:, :3].reshape(-1))
    loss = model(source, decoder_input_ids=decoder_input_ids, labels=ignored).loss
    torch.testing.assert_close(loss, expected)


def test_decoder_inputs_are_labels_shifted_right():
    model = eval_model(VaswaniForConditionalGeneration)
    labels = torch.tensor([[7, 8, 9, -100]])
    assert model.prepare_decoder_input_ids_from_labels(labels).tolist() == [[1, 7, 8, 9]]
    source = random_ids(1, 5)
    torch.testing.assert_close(
        model(source, labels=labels).logits, model(source, decoder_input_ids=torch.tensor([[1, 7, 8, 9]])).logits
    )


def test_causal_lm_labels_align_with_inputs_and_are_shifted_inside():
    model = eval_model(VaswaniForCausalLM)
    ids = random_ids(2, 6)
    logits = model(ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(model(ids, labels=ids).loss, expected)


def test_num_items_in_batch_weights_tokens_across_accumulated_batches():
    model = eval_model(VaswaniForMaskedLM)
    ids = random_ids(2, 6)
    labels = ids.clone()
    labels[0, 2:] = -100  # row 0 has 2 labelled tokens, row 1 has 6
    full_batch_loss = model(ids, labels=labels).loss
    accumulated = sum(model(ids[i : i + 1], labels=labels[i : i + 1], num_items_in_batch=8).loss for i in range(2))
    torch.testing.assert_close(accumulated, full_batch_loss)


def test_label_smoothing_applies_in_training_only():
    model = VaswaniForMaskedLM(tiny_config(label_smoothing=0.1))
    ids = random_ids(2, 6)
    model.eval()
    logits = model(ids).logits
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 99), ids.reshape(-1))
    smoothed = torch.nn.functional.cross_entropy(logits.reshape(-1, 99), ids.reshape(-1), label_smoothing=0.1)
    torch.testing.assert_close(model(ids, labels=ids).loss, plain)
    model.train()  # dropout is 0 in tiny_config, so the logits are the same
    torch.testing.assert_close(model(ids, labels=ids).loss, smoothed)


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (3, torch.tensor([0, 2]), "single_label_classification"),
        (1, torch.tensor([0.5, -1.0]), "regression"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
    ],
)
def test_sequence_classification_losses(num_labels, labels, problem_type):
    model = eval_model(VaswaniForSequenceClassification, num_labels=num_labels)
    output = model(**model_inputs(VaswaniForSequenceClassification), labels=labels)
    assert model.config.problem_type == problem_type
    expected = {
        "single_label_classification": lambda logits: torch.nn.functional.cross_entropy(logits, labels),
        "regression": lambda logits: torch.nn.functional.mse_loss(logits.squeeze(-1), labels),
        "multi_label_classification": lambda logits: torch.nn.functional.binary_cross_entropy_with_logits(logits, labels),
    }[problem_type](output.logits)
    torch.testing.assert_close(output.loss, expected)


def test_classification_pooling_ignores_padding():
    model = eval_model(VaswaniForSequenceClassification)
    ids = random_ids(1, 5)
    padded, mask = pad(ids, 3, "right")
    torch.testing.assert_close(model(padded, attention_mask=mask).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("model_class", ALL_HEADS)
def test_save_and_load_give_exactly_equal_weights_and_logits(model_class, tmp_path):
    model = eval_model(model_class)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    assert (tmp_path / "model.safetensors").exists()
    for (name, original), (_, reloaded) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(original, reloaded), name
    inputs = model_inputs(model_class)
    assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


FIXTURE_CHECKPOINTS = Path(__file__).parent / "fixtures" / "checkpoints"
FIXTURE_VIEWS = {
    "seq2seq": VaswaniForConditionalGeneration,
    "causal_lm": VaswaniForCausalLM,
    "masked_lm": VaswaniForMaskedLM,
    "classification": VaswaniForSequenceClassification,
}


@pytest.mark.parametrize("folder, model_class", FIXTURE_VIEWS.items())
def test_checkpoints_saved_by_earlier_code_load_with_the_same_logits(folder, model_class):
    """Tiny checkpoints saved before the modeling file was restructured (post/pre-LN, tied/untied, learned
    positions, GELU) load without missing or unexpected keys and give the logits saved with them."""
    loaded, info = model_class.from_pretrained(FIXTURE_CHECKPOINTS / folder, output_loading_info=True)
    assert not any(info.values()), info
    expected = load_file(FIXTURE_CHECKPOINTS / folder / "expected.safetensors")
    logits = expected.pop("logits")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**expected).logits, logits, rtol=1e-5, atol=1e-5)


def test_one_shared_matrix_is_saved_once_and_stays_tied_after_loading(tmp_path):
    model = VaswaniForConditionalGeneration(tiny_config())
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared
    model.save_pretrained(tmp_path)
    saved_keys = set(load_file(tmp_path / "model.safetensors"))
    assert "model.shared.weight" in saved_keys and not {"lm_head.weight", "model.encoder.embed_tokens.weight"} & saved_keys
    loaded = VaswaniForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.shared.weight is loaded.model.decoder.embed_tokens.weight


def test_untied_output_projection_keeps_source_and_target_shared(tmp_path):
    model = VaswaniForConditionalGeneration(tiny_config(tie_word_embeddings=False))
    assert model.lm_head.weight is not model.model.shared.weight
    shared = model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is shared is model.model.decoder.embed_tokens.weight
    model.save_pretrained(tmp_path)
    loaded, info = VaswaniForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert loaded.model.decoder.embed_tokens.weight is loaded.model.shared.weight


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForMaskedLM, VaswaniForCausalLM])
def test_resize_token_embeddings_keeps_the_tie_and_survives_save_load(model_class, tmp_path):
    model = model_class(tiny_config())
    model.resize_token_embeddings(120, mean_resizing=False)
    assert model.config.vocab_size == 120 and model.lm_head.weight.shape == (120, 32)
    assert model.lm_head.weight is model.model.shared.weight
    stacks = [getattr(model.model, name) for name in ("encoder", "decoder") if hasattr(model.model, name)]
    assert all(stack.embed_tokens.weight is model.model.shared.weight for stack in stacks)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.model.shared.weight
    assert torch.equal(loaded.model.shared.weight, model.model.shared.weight)


def test_initialisation_follows_the_reference_implementations():
    model = VaswaniForConditionalGeneration(tiny_config(vocab_size=2000, d_model=64))
    embedding = model.model.shared.weight
    assert abs(embedding[5:].std().item() - 64**-0.5) < 0.01  # unit variance once scaled by sqrt(d_model)
    assert embedding[0].abs().max() == 0  # the padding row
    fc1 = model.model.encoder.layers[0].feed_forward.fc1
    xavier_bound = (6 / (fc1.in_features + fc1.out_features)) ** 0.5
    assert fc1.weight.abs().max() <= xavier_bound and fc1.weight.abs().max() > 0.9 * xavier_bound
    assert fc1.bias.abs().max() == 0
    assert torch.equal(model.model.encoder.layers[0].self_attn_layer_norm.weight, torch.ones(64))


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = model_inputs(VaswaniForConditionalGeneration)
    inputs["labels"] = inputs.pop("decoder_input_ids")
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VaswaniForConditionalGeneration(tiny_config()).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**inputs).loss.backward()
        gradients.append({name: parameter.grad for name, parameter in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)


def test_encoder_and_decoder_accessors():
    model = VaswaniForConditionalGeneration(tiny_config())
    assert model.get_encoder() is model.model.encoder and model.get_decoder() is model.model.decoder
    assert model.get_input_embeddings() is model.model.shared and model.get_output_embeddings() is model.lm_head
    causal_lm = VaswaniForCausalLM(tiny_config())
    assert causal_lm.get_decoder() is causal_lm.model.decoder


def test_no_split_modules_are_the_layers():
    model = VaswaniForConditionalGeneration(tiny_config())
    assert set(model._no_split_modules) == {"VaswaniEncoderLayer", "VaswaniDecoderLayer"}


def test_device_map_auto_and_bfloat16_loading(tmp_path):
    model = eval_model(VaswaniForConditionalGeneration)
    model.save_pretrained(tmp_path)
    loaded = VaswaniForConditionalGeneration.from_pretrained(tmp_path, device_map="auto", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.lm_head.weight is loaded.model.shared.weight
    inputs = model_inputs(VaswaniForConditionalGeneration)
    torch.testing.assert_close(loaded(**inputs).logits.float(), model(**inputs).logits, atol=0.1, rtol=0.05)
    assert loaded.generate(inputs["input_ids"], max_new_tokens=3).shape[0] == 2


@pytest.mark.parametrize(
    "auto_class, model_class",
    [
        (AutoModel, VaswaniModel),
        (AutoModelForSeq2SeqLM, VaswaniForConditionalGeneration),
        (AutoModelForMaskedLM, VaswaniForMaskedLM),
        (AutoModelForCausalLM, VaswaniForCausalLM),
        (AutoModelForSequenceClassification, VaswaniForSequenceClassification),
    ],
)
def test_auto_classes_are_registered(auto_class, model_class, tmp_path):
    VaswaniForConditionalGeneration(tiny_config()).save_pretrained(tmp_path)
    assert type(auto_class.from_pretrained(tmp_path)) is model_class


# ----------------------------------------------------------------------------------------------- options


def test_pre_layer_norm_adds_a_final_norm_and_trains():
    model = VaswaniForConditionalGeneration(tiny_config(layer_norm_position="pre", encoder_layers=4))
    assert hasattr(model.model.encoder, "layer_norm") and hasattr(model.model.decoder, "layer_norm")
    assert not hasattr(VaswaniForConditionalGeneration(tiny_config()).model.encoder, "layer_norm")
    assert_learns(model)


def test_post_and_pre_layer_norm_compute_different_functions():
    torch.manual_seed(0)
    post = VaswaniForMaskedLM(tiny_config()).eval()
    pre = VaswaniForMaskedLM(tiny_config(layer_norm_position="pre")).eval()
    pre.load_state_dict(post.state_dict(), strict=False)  # same weights; pre-LN has an extra final norm (identity)
    ids = random_ids(1, 5)
    assert not torch.allclose(post(ids).logits, pre(ids).logits)


def test_learned_positions_are_parameters_and_limit_the_length():
    model = eval_model(VaswaniForMaskedLM, position_embedding_type="learned", max_position_embeddings=8)
    assert model.model.encoder.embed_positions.weight.shape == (8, 32)
    model(random_ids(1, 8))
    with pytest.raises(ValueError, match="longer than max_position_embeddings \\(8\\)"):
        model(random_ids(1, 9))


def test_sinusoidal_positions_follow_the_paper_and_extend_beyond_max_positions():
    model = eval_model(VaswaniForCausalLM, max_position_embeddings=8)
    encoding = model.model.decoder.embed_positions(torch.arange(3).unsqueeze(0))[0]
    position, dimension = 2, 6  # PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i + 1) = cos(...)
    angle = position / 10000 ** (dimension / 32)
    torch.testing.assert_close(encoding[position, dimension], torch.tensor(angle).sin())
    torch.testing.assert_close(encoding[position, dimension + 1], torch.tensor(angle).cos())
    assert model(random_ids(1, 20)).logits.shape == (1, 20, 99)
    positions = model.model.decoder.embed_positions
    assert positions.table.shape[0] >= 20  # the table grew for the longer input, to the same values
    torch.testing.assert_close(positions.table[:3], encoding)
    far = 10_000 / 10000 ** (dimension / 32)
    model(random_ids(1, 2), position_ids=torch.tensor([[0, 10_000]]))  # explicit positions beyond the table
    torch.testing.assert_close(positions(torch.tensor([10_000]))[0, dimension], torch.tensor(far).sin(), atol=1e-4, rtol=0)


def test_explicit_positions_beyond_learned_positions_are_refused():
    model = eval_model(VaswaniForCausalLM, position_embedding_type="learned", max_position_embeddings=8)
    with pytest.raises(ValueError, match="9 positions is longer than max_position_embeddings \\(8\\)"):
        model(random_ids(1, 2), position_ids=torch.tensor([[0, 8]]))


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_activation_option_is_used(activation):
    relu_model = eval_model(VaswaniForMaskedLM)
    other = eval_model(VaswaniForMaskedLM, activation_function=activation)
    other.load_state_dict(relu_model.state_dict())
    ids = random_ids(1, 5)
    assert not torch.allclose(relu_model(ids).logits, other(ids).logits)


def test_embedding_scale_option():
    scaled = eval_model(VaswaniForMaskedLM)
    unscaled = eval_model(VaswaniForMaskedLM, scale_embedding=False)
    unscaled.load_state_dict(scaled.state_dict())
    ids = random_ids(1, 4)
    torch.testing.assert_close(scaled.model.shared(ids), unscaled.model.shared(ids) * 32**0.5)


def test_dropout_is_active_in_training_only():
    model = VaswaniForMaskedLM(tiny_config(dropout=0.3, attention_dropout=0.2, activation_dropout=0.2))
    ids = random_ids(1, 6)
    model.train()
    assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


# ----------------------------------------------------------------------------------------------- errors


def test_ids_outside_the_vocabulary_are_named():
    model = eval_model(VaswaniForConditionalGeneration)
    with pytest.raises(ValueError, match="input_ids holds ids in \\[5, 150\\] but the vocabulary is \\[0, 99\\)"):
        model(torch.tensor([[5, 150]]), decoder_input_ids=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="decoder_input_ids holds ids"):
        model(torch.tensor([[5, 6]]), decoder_input_ids=torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="labels holds ids"):
        model(torch.tensor([[5, 6]]), labels=torch.tensor([[7, 100]]))


# Token-id arguments of the wrong kind: (kind, dtype or shape). Valid ids are a 2-D torch.long or torch.int tensor.
NOT_INTEGER_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.complex64, torch.bool,
                      torch.int8, torch.int16, torch.uint8]  # fmt: skip
WRONG_KIND_OF_IDS = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(NOT_INTEGER_DTYPES)),
    st.tuples(st.just("shape"), st.lists(st.integers(1, 3), max_size=4).filter(lambda shape: len(shape) != 2)),
    st.tuples(st.just("shape"), st.sampled_from([[0, 3], [2, 0], [0, 0], [0], [2, 0, 3]])),  # empty
    st.tuples(st.just("list"), st.just([[5, 6, 7], [8, 9, 10]])),
)
ID_ARGUMENTS = {  # argument -> the models that take it
    "input_ids": [*ALL_HEADS, VaswaniModel],
    "decoder_input_ids": [VaswaniForConditionalGeneration, VaswaniModel],
    "labels": [VaswaniForConditionalGeneration, VaswaniForMaskedLM, VaswaniForCausalLM],
}


def wrong_ids(kind: str, detail):
    if kind == "dtype":
        return random_ids(2, 3).to(detail)
    if kind == "shape":
        return torch.randint(5, 99, detail)
    return detail


@functools.cache
def cached_model(model_class):
    return eval_model(model_class)


@settings(max_examples=100, deadline=None)
@given(
    argument_and_model=st.sampled_from([(argument, model_class) for argument, classes in ID_ARGUMENTS.items()
                                        for model_class in classes]),  # fmt: skip
    wrong=WRONG_KIND_OF_IDS,
)
def test_ids_of_the_wrong_kind_are_refused_with_the_argument_named(argument_and_model, wrong):
    """Floats, booleans, small integer types, missing or extra dimensions, empty tensors and lists as token ids
    fail in the model's own check, naming the argument: never a torch error from deep inside."""
    argument, model_class = argument_and_model
    inputs = model_inputs(model_class)
    inputs.pop("attention_mask")  # its shape follows the ids
    inputs[argument] = wrong_ids(*wrong)
    with pytest.raises((ValueError, TypeError)) as error:
        cached_model(model_class)(**inputs)
    assert re.match(rf"{argument} (has dtype|has shape|have shape|is empty|must be a torch.Tensor)", str(error.value))


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ({"inputs_embeds": random_ids(2, 5)}, ValueError, "inputs_embeds has dtype torch.int64 but embeddings are floats"),
        ({"inputs_embeds": torch.zeros(5, 32)}, ValueError, "inputs_embeds has shape \\(5, 32\\) but must be 3-D"),
        ({"input_ids": random_ids(2, 5), "attention_mask": [[1] * 5] * 2}, TypeError, "attention mask of input_ids must be a torch.Tensor, not list"),
    ],
)  # fmt: skip
def test_embeddings_and_masks_of_the_wrong_kind_are_named(inputs, error, message):
    with pytest.raises(error, match=message):
        cached_model(VaswaniForMaskedLM)(**inputs)


def test_seq2seq_needs_decoder_inputs_or_labels():
    with pytest.raises(ValueError, match="needs decoder_input_ids \\(or labels"):
        eval_model(VaswaniForConditionalGeneration)(random_ids(1, 5))


@pytest.mark.parametrize(
    "model_class, inputs, message",
    [
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(3, 5)}, "attention mask of input_ids has shape \\(3, 5\\) but must be 2-D \\(batch, positions\\) = \\(2, 5\\)"),
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 6)}, "attention mask of input_ids has shape \\(2, 6\\)"),
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 4)}, "attention mask of input_ids has shape \\(2, 4\\)"),
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 5, 5)}, "attention mask of input_ids has shape \\(2, 5, 5\\) but must be 2-D"),
        (VaswaniForConditionalGeneration, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 6), "decoder_input_ids": random_ids(2, 4)}, "attention mask of input_ids has shape \\(2, 6\\)"),
        (VaswaniForConditionalGeneration, {"input_ids": random_ids(2, 5), "decoder_input_ids": random_ids(2, 4), "decoder_attention_mask": torch.ones(2, 3)}, "attention mask of decoder_input_ids has shape \\(2, 3\\) but must be 2-D \\(batch, positions\\) = \\(2, 4\\)"),
        (VaswaniForCausalLM, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 5, 5)}, "attention mask of input_ids has shape \\(2, 5, 5\\)"),
        (VaswaniForCausalLM, {"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 1, 4, 5)}, "attention mask of input_ids has shape \\(2, 1, 4, 5\\)"),
        (VaswaniForMaskedLM, {"input_ids": torch.zeros(2, 0, dtype=torch.long)}, "input_ids is empty \\(shape \\(2, 0\\)\\)"),
        (VaswaniForCausalLM, {"input_ids": torch.zeros(2, 0, dtype=torch.long)}, "input_ids is empty"),
        (VaswaniForConditionalGeneration, {"input_ids": torch.zeros(2, 0, dtype=torch.long), "decoder_input_ids": random_ids(2, 4)}, "input_ids is empty"),
        (VaswaniForConditionalGeneration, {"input_ids": random_ids(2, 5), "decoder_input_ids": torch.zeros(2, 0, dtype=torch.long)}, "decoder_input_ids is empty"),
        (VaswaniForSequenceClassification, {"inputs_embeds": torch.zeros(2, 0, 32)}, "input_ids is empty"),
        (VaswaniForConditionalGeneration, {"input_ids": random_ids(2, 5), "decoder_input_ids": random_ids(3, 4)}, "decoder input has batch size 3 but the encoder output has 2"),
        (VaswaniForConditionalGeneration, {"input_ids": random_ids(2, 5), "decoder_input_ids": random_ids(2, 4), "labels": random_ids(3, 4)}, "labels has batch size 3"),
        (VaswaniForCausalLM, {"input_ids": random_ids(2, 5), "labels": random_ids(2, 4)}, "labels have shape \\(2, 4\\) but input_ids \\(2, 5\\)"),
        (VaswaniForCausalLM, {"inputs_embeds": torch.zeros(2, 5, 32), "labels": random_ids(2, 4)}, "labels have shape \\(2, 4\\) but inputs_embeds \\(2, 5\\)"),
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "labels": random_ids(2, 4)}, "labels have shape \\(2, 4\\) but input_ids \\(2, 5\\)"),
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "labels": random_ids(3, 5)}, "labels have shape \\(3, 5\\) but input_ids \\(2, 5\\)"),
        (VaswaniForMaskedLM, {"input_ids": random_ids(2, 5), "inputs_embeds": torch.zeros(2, 5, 32)}, "exactly one of input_ids and inputs_embeds"),
    ],
)  # fmt: skip
def test_mismatched_inputs_are_named(model_class, inputs, message):
    with pytest.raises(ValueError, match=message):
        eval_model(model_class)(**inputs)


def test_a_source_mask_that_does_not_fit_the_encoder_output_is_named():
    """Given encoder outputs (as generate() passes them), a source mask of another length fails instead of being
    broadcast or cut silently."""
    model = eval_model(VaswaniForConditionalGeneration)
    encoder_outputs = model.get_encoder()(random_ids(2, 5))
    for mask in (torch.ones(2, 6), torch.ones(2, 4)):
        with pytest.raises(ValueError, match="source attention mask has shape .* = \\(2, 5\\)"):
            model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=random_ids(2, 3))


def test_the_mask_of_a_cached_step_covers_the_cached_and_new_tokens():
    model = eval_model(VaswaniForCausalLM)
    prompt = random_ids(1, 4)
    model(random_ids(1, 1), attention_mask=torch.ones(1, 5), cache=model(prompt).cache)  # 4 cached + 1 new
    cache = model(prompt).cache
    with pytest.raises(ValueError, match="\\(1, 1\\) but must be 2-D \\(batch, positions\\) = \\(1, 5\\) \\(4 cached \\+ 1 new\\)"):
        model(random_ids(1, 1), attention_mask=torch.ones(1, 1), cache=cache)


def test_decoder_role_errors():
    seq2seq = eval_model(VaswaniForConditionalGeneration)
    with pytest.raises(ValueError, match="needs encoder_hidden_states"):
        seq2seq.model.decoder(random_ids(1, 3))
    causal_lm = eval_model(VaswaniForCausalLM)
    with pytest.raises(ValueError, match="has no cross-attention"):
        causal_lm.model.decoder(random_ids(1, 3), encoder_hidden_states=torch.zeros(1, 4, 32))


def test_inputs_embeds_match_input_ids():
    model = eval_model(VaswaniForConditionalGeneration)
    source, target = random_ids(1, 5), random_ids(1, 3, 1)
    embeddings = model.get_input_embeddings()
    by_ids = model(source, decoder_input_ids=target).logits
    by_embeddings = model(inputs_embeds=embeddings(source), decoder_inputs_embeds=embeddings(target)).logits
    torch.testing.assert_close(by_embeddings, by_ids)


# ----------------------------------------------------------------------------------------------- learning


def assert_learns(model, steps: int = 30):
    """A few Adam steps on one batch must reduce the loss a lot: the gradients reach every layer correctly."""
    inputs = model_inputs(VaswaniForConditionalGeneration)
    inputs["labels"] = inputs.pop("decoder_input_ids")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow  # ~6 s alone, ~15 s on a busy 2-core machine
def test_a_tiny_model_learns_to_copy():
    """Copying needs attention across the stacks. With the learning rate decayed to 0 the model settles: on 4 seeds
    it copies 99.5-100% of held-out tokens after 200 steps. The thresholds leave wide room for other CPUs, thread
    counts and torch builds (chance is 1 in 15)."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=20, d_model=64, ffn_dim=128)
    model = VaswaniForConditionalGeneration(config)
    steps = 200
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        source = torch.randint(5, 20, (32, 6), generator=generator)
        labels = torch.cat([source, torch.full((32, 1), config.eos_token_id)], dim=1)
        model(source, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    model.eval()
    test_source = torch.randint(5, 20, (64, 6), generator=generator)
    generated = model.generate(test_source, max_new_tokens=7, do_sample=False)
    copied = (generated[:, 1:7] == test_source).float()
    assert copied.mean() > 0.9, copied.mean()
    assert copied.all(dim=1).float().mean() > 0.6  # whole sequences: 97-100% measured
    assert (generated[:, 7] == config.eos_token_id).float().mean() > 0.9


# ----------------------------------------------------------------------------------------------- padding skipped


def per_example_sums(model, examples: list[dict]) -> torch.Tensor:
    """The summed token loss of each example alone (no padding), in one total."""
    return sum(model(**example, num_items_in_batch=1).loss for example in examples)


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForMaskedLM, VaswaniForCausalLM])
def test_training_on_a_padded_batch_equals_training_on_each_example(model_class):
    """The feed-forward sublayers skip padding (and the seq2seq decoder the positions after the last label): the
    loss and the gradients of a padded batch are those of its examples computed one by one."""
    torch.manual_seed(0)
    model = model_class(tiny_config(dropout=0.0, label_smoothing=0.1)).train()
    long, short = random_ids(1, 7)[0], random_ids(1, 4)[0]
    target_long, target_short = random_ids(1, 6)[0], random_ids(1, 3)[0]
    if model_class is VaswaniForConditionalGeneration:
        examples = [
            {"input_ids": long[None], "labels": target_long[None]},
            {"input_ids": short[None], "labels": target_short[None]},
        ]
        batch = {
            "input_ids": torch.stack([long, torch.cat([short, torch.zeros(3, dtype=torch.long)])]),
            "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
            "labels": torch.stack([target_long, torch.cat([target_short, torch.full((3,), -100)])]),
        }
    else:
        examples = [{"input_ids": ids[None], "labels": ids[None]} for ids in (long, short)]
        # Right padding for both: with left padding a causal LM's first real token is predicted from padding.
        padded, mask = torch.cat([short, torch.zeros(3, dtype=torch.long)]), [1] * 4 + [0] * 3
        labels = torch.where(torch.tensor(mask).bool(), padded, -100)
        batch = {
            "input_ids": torch.stack([long, padded]),
            "attention_mask": torch.tensor([[1] * 7, mask]),
            "labels": torch.stack([long, labels]),
        }
    rows_seen = []
    for stack in (getattr(model.model, "encoder", None), getattr(model.model, "decoder", None)):
        if stack is not None:
            fc1 = stack.layers[0].feed_forward.fc1
            fc1.register_forward_hook(lambda module, inputs, output: rows_seen.append(inputs[0].shape[:-1].numel()))
    batch_loss = model(**batch, num_items_in_batch=1).loss
    real_rows = {VaswaniForConditionalGeneration: [7 + 4, 6 + 3]}.get(model_class, [7 + 4])
    assert rows_seen == real_rows  # the feed-forward networks saw the real tokens only
    batch_gradients = torch.autograd.grad(batch_loss, list(model.parameters()), allow_unused=True)
    alone_loss = per_example_sums(model, examples)
    alone_gradients = torch.autograd.grad(alone_loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(batch_loss, alone_loss, atol=1e-4, rtol=1e-5)
    for batch_gradient, alone_gradient in zip(batch_gradients, alone_gradients):
        if batch_gradient is not None:
            torch.testing.assert_close(batch_gradient, alone_gradient, atol=1e-5, rtol=1e-4)


def test_padded_rows_are_found_only_where_there_is_padding():
    from vaswani.modeling.modeling_vaswani import real_token_rows, trailing_label_padding

    assert real_token_rows(None, 3) is None and real_token_rows(torch.ones(2, 3), 3) is None
    assert real_token_rows(torch.tensor([[1, 1, 0], [0, 1, 1]]), 3).tolist() == [0, 1, 4, 5]
    assert real_token_rows(torch.tensor([[0, 1, 1], [1, 1, 1]]), 1) is None  # the newest position of each row
    in_a_decoding_step = real_token_rows(torch.tensor([[1, 1, 0], [0, 1, 1]]), 2, read_mask=False)
    assert in_a_decoding_step.tolist() == [[[True], [False]], [[True], [True]]]  # selects, reads nothing back
    labels = torch.tensor([[5, -100, 6, -100, -100], [-100, -100, -100, -100, -100]])
    assert trailing_label_padding(labels).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
