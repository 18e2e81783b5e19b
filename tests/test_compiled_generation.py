"""`CompiledGenerator`: the tokens of `generate()` (greedy and beam, both generating views, padded batches), one
compilation for every shape, cached on disk, int8 close to float32, and `vaswani-translate --backend torch-compiled`."""

import copy
import stat
from functools import partial

import pytest
import torch

from conftest import corpus_tokenizer, tiny_config, tiny_model
from vaswani import VaswaniForCausalLM, VaswaniForConditionalGeneration
from vaswani.configuration.errors import InputError
from vaswani.modeling import compiled_generation, translate_cli, translation_backends
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
    """Sources padded on the right (seq2seq) or prompts on the left (causal LM), the middle row shorter."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    short = slice(0, 2) if not model.config.is_encoder_decoder else slice(length - 2, length)
    attention_mask[batch // 2, short] = 0
    input_ids[batch // 2, short] = model.config.pad_token_id
    return input_ids, attention_mask


def reference(model, input_ids, attention_mask, **options):
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **options)


def assert_generates_as_generate(generator, model, input_ids, attention_mask, **options) -> torch.Tensor:
    """`generator` gives `model.generate()`'s tokens for these inputs and options; returns them."""
    expected = reference(model, input_ids, attention_mask, **options)
    assert torch.equal(generator.generate(input_ids, attention_mask, **options), expected)
    return expected


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
        expected = assert_generates_as_generate(generator, model, input_ids, attention_mask, **options)
    prompt_length = 1 if model.config.is_encoder_decoder else input_ids.shape[1]
    assert stops_differ(expected, prompt_length, model.config.eos_token_id)  # where stopping rules matter


@pytest.mark.parametrize("generating_model", VIEWS, indirect=True)
def test_beam_search_equals_generate(generating_model):
    model = generating_model
    input_ids, attention_mask = example_inputs(model)
    generator = CompiledGenerator(model, compile=False)
    for length_penalty in (1.0, 0.6):
        options = {"max_new_tokens": 10, "num_beams": 3, "length_penalty": length_penalty}
        expected = assert_generates_as_generate(generator, model, input_ids, attention_mask, **options)
        prompt_length = 1 if model.config.is_encoder_decoder else input_ids.shape[1]
        if length_penalty == 1.0:  # (with 0.6 the causal LM's hypotheses all end at once)
            assert stops_differ(expected, prompt_length, model.config.eos_token_id)


@pytest.mark.parametrize("generating_model", VIEWS, indirect=True)
def test_a_growing_cache_gives_the_same_tokens(generating_model, monkeypatch):
    """The cache starts small and grows as decoding goes: growing it every 3 positions changes no token."""
    monkeypatch.setattr(compiled_generation, "CACHE_GROWTH", 3)
    model = generating_model
    input_ids, attention_mask = example_inputs(model)
    generator = CompiledGenerator(model, compile=False)
    for options in ({"max_new_tokens": 12}, {"max_new_tokens": 12, "num_beams": 3}):
        assert_generates_as_generate(generator, model, input_ids, attention_mask, **options)


@pytest.fixture
def package_cache(tmp_path, monkeypatch):
    """An empty package cache, and a count of the packages compiled into it."""
    compiled = []
    compile_package = compiled_generation.compile_package
    monkeypatch.setattr(compiled_generation, "inductor_cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(compiled_generation, "compile_package", lambda *args: compiled.append(compile_package(*args)))
    return compiled


@pytest.mark.slow
@pytest.mark.parametrize("generating_model", VIEWS, indirect=True)
def test_one_compilation_serves_every_shape_and_later_processes(generating_model, package_cache):
    """The real thing: AOTInductor with frozen weights and autotuned kernels (tens of seconds on a CPU). Batches of
    other sizes and lengths, greedy and beam search, all run the one package; a new generator loads it from disk."""
    model = generating_model
    generator = CompiledGenerator(model)
    for batch, length, beams in ((3, 7, 1), (1, 5, 1), (5, 20, 1), (2, 7, 3)):
        input_ids, attention_mask = padded_batch(model, batch, length)
        options = {"max_new_tokens": 8, "num_beams": beams}
        expected = assert_generates_as_generate(generator, model, input_ids, attention_mask, **options)
    assert len(package_cache) == 1
    again = CompiledGenerator(model).generate(input_ids, attention_mask, **options)
    assert torch.equal(again, expected) and len(package_cache) == 1  # loaded, not compiled
    (package,) = compiled_generation.package_path(generator.step, model).parent.glob("*.pt2")
    for writable in (package, package.parent):  # loading runs the package's code: only the user may have written it
        writable.chmod(writable.stat().st_mode | stat.S_IWOTH)
        with pytest.raises(InputError, match="not owned by this user, or others may write it"):
            CompiledGenerator(model).generate(input_ids, attention_mask, max_new_tokens=2)
        writable.chmod(writable.stat().st_mode & ~stat.S_IWOTH)


def test_a_longer_sinusoid_table_names_another_package():
    """The table is frozen into the package but not saved with the weights: a grown table must not load a package
    made for the shorter one (its positions would be read out of bounds)."""
    model = VaswaniForConditionalGeneration(tiny_config()).eval()
    step = compiled_generation.DecoderStep(model)
    before = compiled_generation.package_path(step, model)
    model.model.decoder.embed_positions.check_length(5000)
    assert compiled_generation.package_path(step, model) != before


@pytest.mark.slow
def test_int8_package_decodes_as_int8_eager(copy_model, package_cache):
    sources, attention_mask = copy_batch(copy_model, 8, torch.Generator().manual_seed(3))
    eager = CompiledGenerator(copy_model, quantization="int8", compile=False).generate(sources, attention_mask)
    compiled = CompiledGenerator(copy_model, quantization="int8").generate(sources, attention_mask)
    assert compiled.shape == eager.shape and (compiled == eager).float().mean() > 0.95  # other kernels, other sums
    assert len(package_cache) == 1  # its own package: the int8 weights are part of what it is named by


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


def test_int8_without_a_kernel_for_the_device_is_refused(monkeypatch):
    def missing(*args):
        raise NotImplementedError("Could not run 'aten::_weight_int8pack_mm' with arguments from the 'CUDA' backend.")

    monkeypatch.setattr(torch.ops.aten, "_weight_int8pack_mm", missing)
    with pytest.raises(ValueError, match="needs PyTorch's int8 weight kernel, which fails on cpu: Could not run"):
        CompiledGenerator(VaswaniForConditionalGeneration(tiny_config()), quantization="int8")


# ----------------------------------------------------------------------------------------------- int8


def test_int8_agrees_with_float32_on_a_trained_model(copy_model):
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
    code, translations = translate(tmp_path, SENTENCES, *options, "int8")
    assert code == 0 and len(translations) == len(SENTENCES)
