"""CTranslate2 export: each view scores, decodes and encodes as PyTorch does; int8 runs; errors name the fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import corpus_tokenizer, tiny_model
from vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    causal_lm_tokenizer,
)
from vaswani.modeling import ctranslate2_export
from vaswani.modeling.ctranslate2_export import export_ctranslate2, main

ctranslate2 = pytest.importorskip("ctranslate2")

SOURCES = ["In the beginning God created the heavens and the earth.", "Jesus wept.", "And God said, Let there be light"]
# Each variant changes what the export must map: post-/pre-LN (final layer norms), activation, sinusoidal/learned
# positions, tied/untied output projection, and stacks of different depth, width and head count.
VARIANTS = {
    "paper": {},
    "pre_ln_gelu_learned": {
        "layer_norm_position": "pre", "activation_function": "gelu", "position_embedding_type": "learned",
    },
    "untied_silu_uneven_stacks": {
        "tie_word_embeddings": False, "activation_function": "silu", "decoder_layers": 3, "decoder_attention_heads": 2,
        "decoder_ffn_dim": 48, "scale_embedding": False,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return corpus_tokenizer(model_max_length=64)


def tiny(model_class, tokenizer, **overrides):
    return tiny_model(model_class, tokenizer, max_position_embeddings=128, **overrides)


def saved(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def exported(model, tokenizer, tmp_path, quantization=None):
    return export_ctranslate2(saved(model, tokenizer, tmp_path / "model"), tmp_path / "ct2", quantization=quantization)


def source_tokens(tokenizer, texts=SOURCES):
    return [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(texts)["input_ids"]]


def model_log_probs(model, tokenizer, source: str, target_ids: list[int]) -> np.ndarray:
    """log p(target_i | source, target_<i) from the PyTorch model, for each target token."""
    with torch.no_grad():
        logits = model(**tokenizer([source], return_tensors="pt"), labels=torch.tensor([target_ids])).logits
    return logits.log_softmax(-1)[0, torch.arange(len(target_ids)), torch.tensor(target_ids)].numpy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_seq2seq_export_scores_every_target_token_as_the_model_does(tokenizer, tmp_path, variant):
    model = tiny(VaswaniForConditionalGeneration, tokenizer, **VARIANTS[variant])
    translator = ctranslate2.Translator(exported(model, tokenizer, tmp_path))
    texts = ["Y dijo Dios", "Jesús lloró.", "En el principio"]
    targets = [tokenizer(text_target=text)["input_ids"][:-1] for text in texts]
    scores = translator.score_batch(source_tokens(tokenizer), [tokenizer.convert_ids_to_tokens(ids) for ids in targets])
    for source, target, score in zip(SOURCES, targets, scores):
        # CTranslate2 scores the end token too (one more value); the positions before it are compared.
        np.testing.assert_allclose(score.log_probs[:-1], model_log_probs(model, tokenizer, source, target), atol=1e-4)


def test_float32_greedy_translations_are_generates_tokens(tokenizer, tmp_path):
    model = tiny(VaswaniForConditionalGeneration, tokenizer)
    translator = ctranslate2.Translator(exported(model, tokenizer, tmp_path))
    results = translator.translate_batch(source_tokens(tokenizer), beam_size=1, max_decoding_length=30)
    for source, result in zip(SOURCES, results):
        generated = model.generate(**tokenizer([source], return_tensors="pt"), max_new_tokens=30, do_sample=False)
        expected = [i for i in generated[0, 1:].tolist() if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
        assert tokenizer.convert_tokens_to_ids(result.hypotheses[0]) == expected


def test_int8_export_is_smaller_and_scores_close_to_float32(tokenizer, tmp_path):
    model = tiny(VaswaniForConditionalGeneration, tokenizer, d_model=64, ffn_dim=256)
    float32 = ctranslate2.Translator(exported(model, tokenizer, tmp_path / "float32"))
    int8 = ctranslate2.Translator(exported(model, tokenizer, tmp_path / "int8", quantization="int8"))
    targets = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(text_target=SOURCES)["input_ids"]]
    exact, quantized = (
        np.concatenate([score.log_probs for score in translator.score_batch(source_tokens(tokenizer), targets)])
        for translator in (float32, int8)
    )
    # int8 weights and activations move a random tiny model's log-probabilities by tenths (measured: up to 0.9 of
    # values from -2 to -8), but keep their pattern across tokens: a correlation near 1, where another model's
    # would be near 0.
    assert np.corrcoef(exact, quantized)[0, 1] > 0.8
    assert not np.array_equal(quantized, exact)  # the int8 weights were used
    sizes = {name: os.path.getsize(tmp_path / name / "ct2" / "model.bin") for name in ("float32", "int8")}
    assert sizes["int8"] < 0.75 * sizes["float32"]  # the position table stays float32
    assert int8.translate_batch(source_tokens(tokenizer), max_decoding_length=10)[0].hypotheses[0]


def test_causal_lm_export_continues_prompts_as_generate_does(tokenizer, tmp_path):
    lm_tokenizer = causal_lm_tokenizer(tokenizer)
    model = tiny(VaswaniForCausalLM, lm_tokenizer, tie_word_embeddings=False, layer_norm_position="pre")
    generator = ctranslate2.Generator(exported(model, lm_tokenizer, tmp_path))
    for prompt in SOURCES:
        ids = lm_tokenizer([prompt], return_tensors="pt")["input_ids"]
        result = generator.generate_batch(
            [lm_tokenizer.convert_ids_to_tokens(ids[0])], max_length=12, sampling_topk=1, include_prompt_in_result=False
        )[0]
        expected = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :].tolist()
        assert lm_tokenizer.convert_tokens_to_ids(result.sequences[0]) == expected[: len(result.sequences_ids[0])]
        assert len(result.sequences_ids[0]) == 12 or expected[len(result.sequences_ids[0])] == lm_tokenizer.eos_token_id


def test_encoder_export_gives_the_encoders_hidden_states(tokenizer, tmp_path):
    model = tiny(VaswaniForMaskedLM, tokenizer, layer_norm_position="pre")
    encoder = ctranslate2.Encoder(exported(model, tokenizer, tmp_path))
    hidden = np.array(encoder.forward_batch(source_tokens(tokenizer)).last_hidden_state)
    for row, text in enumerate(SOURCES):
        inputs = tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            expected = model.model.encoder(**inputs).last_hidden_state[0].numpy()
        np.testing.assert_allclose(hidden[row, : len(expected)], expected, atol=1e-4)


def test_exported_folder_holds_the_tokenizer_and_the_position_count(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    model = tiny(VaswaniForConditionalGeneration, tokenizer, position_embedding_type="learned")
    folder = exported(model, tokenizer, tmp_path)
    assert AutoTokenizer.from_pretrained(folder)(SOURCES)["input_ids"] == tokenizer(SOURCES)["input_ids"]
    assert json.loads((Path(folder) / "config.json").read_text())["max_positions"] == 128  # read by vaswani-translate
    translator = ctranslate2.Translator(folder)
    with pytest.raises(RuntimeError, match="position"):  # learned positions end where the model's end
        translator.translate_batch(source_tokens(tokenizer)[:1], max_decoding_length=200, min_decoding_length=150)


def test_loader_is_registered_with_ctranslate2s_own_converter(tokenizer, tmp_path):
    from ctranslate2.converters import TransformersConverter

    model_dir = saved(tiny(VaswaniForConditionalGeneration, tokenizer), tokenizer, tmp_path / "model")
    TransformersConverter(str(model_dir)).convert(str(tmp_path / "ct2"))
    translator = ctranslate2.Translator(str(tmp_path / "ct2"))
    assert translator.translate_batch(source_tokens(tokenizer)[:1], max_decoding_length=5)[0].hypotheses[0]


def test_export_refuses_what_it_cannot_convert_and_says_why(tokenizer, tmp_path):
    model_dir = saved(tiny(VaswaniForConditionalGeneration, tokenizer), tokenizer, tmp_path / "model")
    with pytest.raises(ValueError, match="quantization"):
        export_ctranslate2(model_dir, tmp_path / "out", quantization="int3")
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a model on the Hub"):
        export_ctranslate2(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="holds the model"):  # --force would delete the model itself
        export_ctranslate2(model_dir, model_dir, force=True)
    assert (model_dir / "config.json").is_file()
    export_ctranslate2(model_dir, tmp_path / "out")
    with pytest.raises(FileExistsError, match="force"):
        export_ctranslate2(model_dir, tmp_path / "out")
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match="no tokenizer"):
        export_ctranslate2(model_dir, tmp_path / "other")
    from transformers import BertConfig

    bert = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a Vaswani model"):
        export_ctranslate2(tmp_path / "bert", tmp_path / "other")


def test_command_line_exports_and_reports_errors_without_a_traceback(tokenizer, tmp_path, capsys):
    model_dir = saved(tiny(VaswaniForConditionalGeneration, tokenizer), tokenizer, tmp_path / "model")
    assert main([str(model_dir), str(tmp_path / "ct2"), "--quantization", "int8"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ct2")
    assert (tmp_path / "ct2" / "model.bin").is_file()
    assert main([str(model_dir), str(tmp_path / "ct2")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_without_ctranslate2_the_export_says_what_to_install(tmp_path):
    # A fresh interpreter in which `import ctranslate2` fails, as where the extra is not installed.
    code = (
        "import sys; sys.modules['ctranslate2'] = None\n"
        "import vaswani\n"
        "from vaswani.modeling.ctranslate2_export import main\n"
        f"sys.exit(main([{str(tmp_path)!r}, {str(tmp_path / 'out')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert 'pip install "vaswani[ctranslate2]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_export_without_ctranslate2_raises_an_import_error_naming_the_extra(tmp_path, monkeypatch):
    import vaswani

    monkeypatch.setattr(ctranslate2_export, "ctranslate2", None)
    with pytest.raises(ImportError, match=r"vaswani\[ctranslate2\]"):
        vaswani.export_ctranslate2(tmp_path, tmp_path / "out")
