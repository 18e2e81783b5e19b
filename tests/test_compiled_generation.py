"""`CompiledGenerator`: the tokens of `generate()` (greedy and beam, both generating views, padded batches), one
compilation per shape bucket, int8 close to float32, and `vaswani-translate --backend torch-compiled`."""

import copy
import importlib.util
import sys
from functools import partial

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from conftest import corpus_tokenizer, tiny_config, tiny_model
from vaswani import VaswaniForCausalLM, VaswaniForConditionalGeneration
from vaswani.modeling import translate_cli, translation_backends
from vaswani.modeling.compiled_generation import CompiledGenerator

VIEWS = [VaswaniForConditionalGeneration, VaswaniForCausalLM]


def train_copy_model(steps: int = 300, learning_rate: float = 5e-3):
    """A tiny seq2seq model trained to copy sources of 3 to 8 tokens and end with EOS (a few seconds on a CPU): its
    outputs end after different numbers of tokens, row by row, without near-ties, and int8 must keep what it learned."""
    torch.manual_seed(0)
    model = VaswaniForConditionalGeneration(tiny_config(vocab_size=40))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        sources, attention_mask = copy_batch(model, 32)
        labels = sources.masked_fill(attention_mask == 0, -100)
        labels = torch.cat((labels, torch.full((32, 1), -100)), 1)
        labels[torch.arange(32), attention_mask.sum(-1)] = model.config.eos_token_id
        loss = model(input_ids=sources, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def copy_batch(model, batch: int, generator: torch.Generator | None = None):
    """Sources of 3 to 8 tokens, padded on the right."""
    sources = torch.randint(5, model.config.vocab_size, (batch, 8), generator=generator)
    lengths = torch.randint(3, 9, (batch, 1), generator=generator)
    attention_mask = (torch.arange(8) < lengths).long()
    return sources.masked_fill(attention_mask == 0, model.config.pad_token_id), attention_mask


@pytest.fixture(scope="module")
def copy_model():
    return train_copy_model()


@pytest.fixture
def generating_model(request):
    """The seq2seq copy model, or a tiny random causal LM (untied: its rows then end after different numbers of
    tokens, which a random seq2seq model's do not)."""
    if request.param is VaswaniForConditionalGeneration:
        return request.getfixturevalue("copy_model")
    torch.manual_seed(0)
    return VaswaniForCausalLM(tiny_config(tie_word_embeddings=False)).eval()


def example_inputs(model):
    """Three sources of different lengths (seq2seq) or three prompts, one left-padded (causal LM)."""
    if model.config.is_encoder_decoder:
        return copy_batch(model, 3, torch.Generator().manual_seed(1))
    return padded_batch(model)


def padded_batch(model, batch: int = 3, length: int = 7, seed: int = 0):
    """Sources padded on the right (seq2seq) or prompts on the left (causal LM), one row shorter than the rest."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    short = slice(0, 2) if not model.config.is_encoder_decoder else slice(length - 2, length)
    attention_mask[1, short] = 0
    input_ids[1, short] = model.config.pad_token_id
    return input_ids, attention_mask


def reference(model, input_ids, attention_mask, **options):
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **options)


def stops_differ(sequences: torch.Tensor, prompt_length: int, eos_token_id: int) -> bool:
    """Rows end (their first EOS, or the limit) after different numbers of new tokens."""
    new_tokens = sequences[:, prompt_length:] == eos_token_id
    ends = torch.where(new_tokens.any(-1), new_tokens.int().argmax(-1), new_tokens.shape[1])
    return len(set(ends.tolist())) > 1


@pytest.mark.parametrize("generating_model", VIEWS, indirect=True)
def test_greedy_tokens_equal_generate(generating_model):
    model = generating_model
    input_ids, attention_mask = example_inputs(model)
    generator = CompiledGenerator(model, compile=False)
    for options in ({"max_new_tokens": 12}, {"max_new_tokens": 12, "min_new_tokens": 4}):
        expected = reference(model, input_ids, attention_mask, **options)
        assert torch.equal(generator.generate(input_ids, attention_mask, **options), expected)
    prompt_length = 1 if model.config.is_encoder_decoder else input_ids.shape[1]
    assert stops_differ(expected, prompt_length, model.config.eos_token_id)  # where stopping rules matter


@pytest.mark.parametrize("generating_model", VIEWS, indirect=True)
def test_beam_search_equals_generate(generating_model):
    model = generating_model
    input_ids, attention_mask = example_inputs(model)
    generator = CompiledGenerator(model, compile=False)
    for length_penalty in (1.0, 0.6):
        options = {"max_new_tokens": 10, "num_beams": 3, "length_penalty": length_penalty}
        expected = reference(model, input_ids, attention_mask, **options)
        assert torch.equal(generator.generate(input_ids, attention_mask, **options), expected)
        prompt_length = 1 if model.config.is_encoder_decoder else input_ids.shape[1]
        if length_penalty == 1.0:  # (with 0.6 the causal LM's hypotheses all end at once)
            assert stops_differ(expected, prompt_length, model.config.eos_token_id)


def test_compiles_once_per_shape_bucket(copy_model):
    model = copy_model
    counter = CompileCounter()
    generator = CompiledGenerator(model, backend=counter)
    # 3 and 4 sentences of 7 and 9 tokens share a bucket (4 rows, 16 source positions, 64 cache positions) ...
    for batch, length in ((3, 7), (4, 9), (3, 7)):
        input_ids, attention_mask = padded_batch(model, batch, length)
        expected = reference(model, input_ids, attention_mask, max_new_tokens=8)
        assert torch.equal(generator.generate(input_ids, attention_mask, max_new_tokens=8), expected)
    assert counter.frame_count == 1
    # ... 5 sentences (8 rows), 20 tokens (32 positions) or beam search's reordering step each compile once more.
    for batch, length, beams in ((5, 7, 1), (5, 7, 1), (3, 20, 1), (3, 7, 2), (4, 7, 2)):
        generator.generate(*padded_batch(model, batch, length), max_new_tokens=8, num_beams=beams)
    assert counter.frame_count == 4
    assert len(generator.buckets) == 3  # (rows, cache, source): (4, 64, 16), (8, 64, 16), (4, 64, 32)


@pytest.mark.slow
def test_inductor_compiled_step_equals_generate(copy_model):
    """The real thing: Inductor with frozen weights and the C++ wrapper (tens of seconds to compile on a CPU)."""
    model = copy_model
    input_ids, attention_mask = example_inputs(model)
    expected = reference(model, input_ids, attention_mask, max_new_tokens=12)
    assert torch.equal(CompiledGenerator(model).generate(input_ids, attention_mask, max_new_tokens=12), expected)
    if importlib.util.find_spec("torchao"):  # int8 compiles to other kernels (oneDNN's int8 products)
        int8 = CompiledGenerator(model, quantization="int8").generate(input_ids, attention_mask, max_new_tokens=12)
        assert int8.shape == expected.shape and (int8 == expected).float().mean() > 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cuda_graphs_equal_generate(copy_model, num_beams):
    model = copy.deepcopy(copy_model).cuda()
    input_ids, attention_mask = (tensor.cuda() for tensor in example_inputs(model))
    options = {"max_new_tokens": 12, "num_beams": num_beams}
    expected = reference(model, input_ids, attention_mask, **options)
    generator = CompiledGenerator(model)
    for _ in range(2):  # the second call replays the recorded graphs
        assert torch.equal(generator.generate(input_ids, attention_mask, **options), expected)


def test_rejects_views_that_do_not_generate_and_unknown_quantization():
    from vaswani import VaswaniForMaskedLM

    with pytest.raises(ValueError, match="does not generate"):
        CompiledGenerator(VaswaniForMaskedLM(tiny_config()))
    with pytest.raises(ValueError, match="quantization must be one of"):
        CompiledGenerator(VaswaniForConditionalGeneration(tiny_config()), quantization="int4")


# ----------------------------------------------------------------------------------------------- int8


def test_int8_agrees_with_float32_on_a_trained_model(copy_model):
    pytest.importorskip("torchao")
    sources, attention_mask = copy_batch(copy_model, 32, torch.Generator().manual_seed(2))
    float32 = CompiledGenerator(copy_model, compile=False).generate(sources, attention_mask, max_new_tokens=9)
    int8 = CompiledGenerator(copy_model, quantization="int8", compile=False)
    quantized = int8.generate(sources, attention_mask, max_new_tokens=9)
    real = attention_mask.bool()
    assert (float32[:, 1:9][real] == sources[real]).float().mean() > 0.8  # the model learned to copy: a real check
    assert quantized.shape == float32.shape and (quantized == float32).float().mean() > 0.95  # top-1 tokens agree
    assert copy_model.lm_head.weight.dtype == torch.float32  # quantization worked on a copy


# ----------------------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = corpus_tokenizer(model_max_length=48)
    folder = tmp_path_factory.mktemp("model")
    tiny_model(VaswaniForConditionalGeneration, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def translate(tmp_path, lines: list[str], *options: str) -> tuple[int, list[str]]:
    source, target = tmp_path / "input.txt", tmp_path / "output.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    target.unlink(missing_ok=True)
    code = translate_cli.main(["--input", str(source), "--output", str(target), *options])
    return code, target.read_text(encoding="utf-8").split("\n")[:-1] if target.exists() else []


SENTENCES = ["Jesus wept.", "In the beginning God created the heavens and the earth.", "", "Amen."]


@pytest.mark.parametrize("num_beams", ["1", "3"])
def test_translate_backend_torch_compiled_gives_generates_translations(model_dir, tmp_path, monkeypatch, num_beams):
    # Compiling is tested above; here the command line's wiring, with the same steps run eagerly.
    monkeypatch.setattr(translation_backends, "CompiledGenerator", partial(CompiledGenerator, compile=False))
    options = ["--model", str(model_dir), "--num-beams", num_beams, "--batch-size", "2"]
    code, expected = translate(tmp_path, SENTENCES, *options)
    assert code == 0 and len(expected) == len(SENTENCES)
    assert translate(tmp_path, SENTENCES, *options, "--backend", "torch-compiled") == (0, expected)


def test_translate_torch_compiled_compute_types(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(translation_backends, "CompiledGenerator", partial(CompiledGenerator, compile=False))
    options = ["--model", str(model_dir), "--backend", "torch-compiled", "--compute-type"]
    assert translate(tmp_path, SENTENCES, *options, "float16") == (2, [])
    assert "--backend torch-compiled takes float32 or int8" in capsys.readouterr().err
    with monkeypatch.context() as without_torchao:
        without_torchao.setitem(sys.modules, "torchao.quantization", None)  # import fails as if not installed
        assert translate(tmp_path, SENTENCES, *options, "int8") == (2, [])
        assert "pip install 'vaswani[torchao]'" in capsys.readouterr().err
    pytest.importorskip("torchao")
    code, translations = translate(tmp_path, SENTENCES, *options, "int8")
    assert code == 0 and len(translations) == len(SENTENCES)
