"""Reaching the models through transformers: pipelines (fill-mask, text-generation, translation), `translate`, the
exported translation pipeline without `vaswani`, and loading and compiling as users deploy (device_map, bfloat16,
torch.compile)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM, pipeline

from conftest import corpus_tokenizer, tiny_model
from vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    causal_lm_tokenizer,
)
from vaswani.modeling import pipeline_vaswani
from vaswani.modeling.pipeline_vaswani import EXTRA_OUTPUT_TOKENS, VaswaniTranslationPipeline
from vaswani.modeling.pipelines import translate
from vaswani.training.export import save_for_hub

SOURCES = ["In the beginning God created the heavens and the earth.", "Jesus wept.", "And God said"]
HEADS = [VaswaniForConditionalGeneration, VaswaniForMaskedLM, VaswaniForCausalLM, VaswaniForSequenceClassification]


@pytest.fixture(scope="module")
def tokenizer():
    return corpus_tokenizer(model_max_length=64)


def tiny(model_class, tokenizer, **overrides):
    return tiny_model(model_class, tokenizer, max_position_embeddings=256, **overrides)


def record_output_lengths(model) -> list[int]:
    """Wraps `model.generate` to record the length of every sequence it returns (start token included)."""
    lengths, generate = [], model.generate

    def recording_generate(*args, **kwargs):
        output = generate(*args, **kwargs)
        lengths.append(output.shape[-1])
        return output

    model.generate = recording_generate
    return lengths


def model_inputs(model_class, tokenizer):
    batch = tokenizer(SOURCES[:2], padding=True, return_tensors="pt")
    if model_class is VaswaniForConditionalGeneration:
        batch["decoder_input_ids"] = tokenizer(SOURCES[1:], padding=True, return_tensors="pt")["input_ids"]
    return dict(batch)


# ----------------------------------------------------------------------------------------------- fill-mask, generation


def test_fill_mask_pipeline_ranks_the_models_probabilities_at_the_mask(tokenizer):
    model = tiny(VaswaniForMaskedLM, tokenizer)
    text = "In the beginning God <mask> the heavens"
    results = pipeline("fill-mask", model=model, tokenizer=tokenizer)(text, top_k=3)
    inputs = tokenizer(text, return_tensors="pt")
    position = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero().item()
    probabilities = model(**inputs).logits[0, position].softmax(-1)
    expected = probabilities.topk(3)
    assert [result["token"] for result in results] == expected.indices.tolist()
    torch.testing.assert_close(torch.tensor([result["score"] for result in results]), expected.values)
    assert results[0]["sequence"].startswith("In the beginning God")


def test_text_generation_pipeline_continues_the_prompt_as_generate_does(tokenizer):
    model, prompt_tokenizer = tiny(VaswaniForCausalLM, tokenizer), causal_lm_tokenizer(tokenizer)
    generator = pipeline("text-generation", model=model, tokenizer=prompt_tokenizer)
    generated = generator(SOURCES[2], max_new_tokens=6, do_sample=False)[0]["generated_text"]
    inputs = prompt_tokenizer(SOURCES[2], return_tensors="pt")
    assert inputs["input_ids"][0, 0] == tokenizer.bos_token_id  # the prompt starts with <s>, does not end with </s>
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert generated == prompt_tokenizer.decode(expected[0], skip_special_tokens=True)
    assert generated.startswith(SOURCES[2]) and len(generated) > len(SOURCES[2])
    batched = generator(SOURCES[1:], max_new_tokens=6, do_sample=False, batch_size=2)  # left padding
    assert batched[1][0]["generated_text"] == generated


# ----------------------------------------------------------------------------------------------- translation


def test_translation_pipeline_is_registered_and_translates_as_translate_does(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    assert isinstance(translator, VaswaniTranslationPipeline)
    expected = translate(model, tokenizer, SOURCES, num_beams=2, max_new_tokens=8)
    assert translator(SOURCES[0], num_beams=2, max_new_tokens=8) == [{"translation_text": expected[0]}]
    batched = translator(SOURCES, num_beams=2, max_new_tokens=8, batch_size=2)
    assert [result["translation_text"] for result in batched] == expected
    several = translator(SOURCES[:2], num_beams=3, num_return_sequences=2, max_new_tokens=8)
    assert [len(result) for result in several] == [2, 2]


def test_translation_pipeline_takes_generation_options_at_construction(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    never_stop = {"bad_words_ids": [[tokenizer.eos_token_id]]}  # so that only the length limit ends generation
    translator = pipeline("translation", model=model, tokenizer=tokenizer, max_new_tokens=3, **never_stop)
    lengths = record_output_lengths(model)
    translator(SOURCES[0])
    translator(SOURCES[0], max_new_tokens=4)  # the call's value wins
    assert lengths == [1 + 3, 1 + 4]


def test_translation_needs_an_encoder_decoder_and_its_tokenizer(tokenizer):
    with pytest.raises(ValueError, match="needs an encoder-decoder model, not VaswaniForMaskedLM"):
        pipeline("translation", model=tiny(VaswaniForMaskedLM, tokenizer), tokenizer=tokenizer)
    other = tiny(VaswaniForConditionalGeneration, tokenizer, eos_token_id=3)
    with pytest.raises(ValueError, match="eos_token_id is 3 in the config but 2 in the tokenizer"):
        pipeline("translation", model=other, tokenizer=tokenizer)


def test_translations_stop_at_the_papers_length_unless_told(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    never_stop = {"bad_words_ids": [[tokenizer.eos_token_id]]}  # so that only the length limit ends generation
    source_length = len(tokenizer(SOURCES[0])["input_ids"])
    translator = pipeline("translation", model=model, tokenizer=tokenizer)
    lengths = record_output_lengths(model)
    translation = translate(model, tokenizer, SOURCES[0], **never_stop)
    assert translator(SOURCES[0], **never_stop)[0]["translation_text"] == translation
    translate(model, tokenizer, SOURCES[0], max_new_tokens=5, **never_stop)
    model.generation_config.max_length = 7  # a length the model's generation config sets is kept too
    translator(SOURCES[0], **never_stop)
    assert lengths == [1 + source_length + EXTRA_OUTPUT_TOKENS] * 2 + [1 + 5, 7]


def test_translate_keeps_the_order_whatever_the_batching(tokenizer):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    one_by_one = [translate(model, tokenizer, source, max_new_tokens=6) for source in SOURCES]
    assert translate(model, tokenizer, SOURCES, batch_size=2, max_new_tokens=6) == one_by_one


def test_exported_seq2seq_model_names_its_translation_pipeline(tokenizer, tmp_path):
    save_for_hub(tiny(VaswaniForConditionalGeneration, tokenizer), tokenizer, tmp_path / "mt")
    save_for_hub(tiny(VaswaniForMaskedLM, tokenizer), tokenizer, tmp_path / "mlm")
    config = json.loads((tmp_path / "mt" / "config.json").read_text())
    assert config["custom_pipelines"]["translation"]["impl"] == "pipeline_vaswani.VaswaniTranslationPipeline"
    assert (tmp_path / "mt" / "pipeline_vaswani.py").read_bytes() == Path(pipeline_vaswani.__file__).read_bytes()
    assert "custom_pipelines" not in json.loads((tmp_path / "mlm" / "config.json").read_text())
    reloaded = VaswaniForConditionalGeneration.from_pretrained(tmp_path / "mt")
    assert reloaded.config.custom_pipelines == config["custom_pipelines"]


def test_exported_translation_pipeline_loads_where_vaswani_is_imported(tokenizer, tmp_path):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    save_for_hub(model, tokenizer, tmp_path / "mt")
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # a folder with pipeline code: transformers asks
        pipeline("translation", model=str(tmp_path / "mt"))
    translator = pipeline("translation", model=str(tmp_path / "mt"), trust_remote_code=True)
    assert translator(SOURCES, max_new_tokens=8) == [
        {"translation_text": text} for text in translate(model, tokenizer, SOURCES, max_new_tokens=8)
    ]


CLEAN_TRANSLATION = """
import json, sys
sys.modules["vaswani"] = None  # the editable install is importable anywhere: block it, as on a machine without it
from transformers import pipeline
translator = pipeline("translation", model=sys.argv[1], trust_remote_code=True)
results = translator(json.loads(sys.argv[2]), max_new_tokens=8)
print(json.dumps({"class": type(translator).__module__ + "." + type(translator).__name__,
                  "texts": [result["translation_text"] for result in results]}))
"""


@pytest.mark.slow
def test_exported_translation_pipeline_runs_without_vaswani(tokenizer, tmp_path):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    save_for_hub(model, tokenizer, tmp_path / "mt")
    environment = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", CLEAN_TRANSLATION, str(tmp_path / "mt"), json.dumps(SOURCES)],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["class"].startswith("transformers_modules.")  # the folder's copy of the code, not ours
    assert result["class"].endswith(".pipeline_vaswani.VaswaniTranslationPipeline")
    assert result["texts"] == translate(model, tokenizer, SOURCES, max_new_tokens=8)


# ----------------------------------------------------------------------------------------------- loading, compiling


@pytest.mark.parametrize("model_class", HEADS)
def test_device_map_auto_and_bfloat16_load_every_head(model_class, tokenizer, tmp_path):
    model = tiny(model_class, tokenizer)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path, device_map="auto", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu" and not loaded.training
    inputs = model_inputs(model_class, tokenizer)
    torch.testing.assert_close(loaded(**inputs).logits.float(), model(**inputs).logits, atol=0.1, rtol=0.05)
    if model_class in (VaswaniForConditionalGeneration, VaswaniForCausalLM):
        assert loaded.generate(inputs["input_ids"], max_new_tokens=3).dtype == torch.long


def test_pipeline_loads_a_saved_model_in_bfloat16_with_device_map(tokenizer, tmp_path):
    model = tiny(VaswaniForMaskedLM, tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fill_mask = pipeline("fill-mask", model=str(tmp_path), dtype=torch.bfloat16, device_map="auto")
    assert isinstance(fill_mask.model, VaswaniForMaskedLM) and fill_mask.model.dtype == torch.bfloat16
    expected = pipeline("fill-mask", model=AutoModelForMaskedLM.from_pretrained(tmp_path), tokenizer=tokenizer)
    text = "In the <mask>"
    assert fill_mask(text, top_k=1)[0]["token"] == expected(text, top_k=1)[0]["token"]


def compiled_and_eager_outputs(model_class, tokenizer, backend: str):
    """Logits of the real tokens: at padding they are undefined (eager skips the feed-forward work there, a compiled
    graph with its static shapes does not)."""
    model = tiny(model_class, tokenizer)
    inputs = model_inputs(model_class, tokenizer)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    per_token = model_class in (VaswaniForMaskedLM, VaswaniForCausalLM)
    real = inputs["attention_mask"].bool() if per_token else slice(None)
    with torch.no_grad():
        return compiled(**inputs).logits[real], model(**inputs).logits[real]


@pytest.mark.parametrize("model_class", HEADS)
def test_forward_compiles_as_one_graph(model_class, tokenizer):
    """fullgraph=True fails on any graph break; dynamo's eager backend traces without compiling kernels (fast)."""
    compiled, eager = compiled_and_eager_outputs(model_class, tokenizer, backend="eager")
    torch.testing.assert_close(compiled, eager)


def test_training_step_compiles_as_one_graph(tokenizer):
    """Training with labels scores only the labelled positions (a data-dependent shape), still without graph breaks."""
    model = tiny(VaswaniForConditionalGeneration, tokenizer).train()
    batch = tokenizer(SOURCES[:2], text_target=SOURCES[1:], padding=True, return_tensors="pt")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    expected = model(**batch).loss
    torch._dynamo.reset()
    loss = torch.compile(model, fullgraph=True, backend="eager")(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, expected)
    assert model.model.shared.weight.grad is not None


@pytest.mark.slow
@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
def test_forward_compiles_with_inductor(model_class, tokenizer):
    compiled, eager = compiled_and_eager_outputs(model_class, tokenizer, backend="inductor")
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
