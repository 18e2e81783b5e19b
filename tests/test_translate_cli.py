"""`vaswani-translate`: input order and line structure survive batching, long lines, both backends, and errors."""

import io
import pickle
import shutil
import sys
from pathlib import Path

import pytest

from conftest import corpus_tokenizer, tiny_model
from vaswani import VaswaniForCausalLM, VaswaniForConditionalGeneration
from vaswani.modeling import ctranslate2_export, translate_cli
from vaswani.modeling.translate_cli import length_batches, main

SENTENCES = [
    "Jesus wept.",
    "In the beginning God created the heavens and the earth.",
    "And God said, Let there be light: and there was light.",
    "The earth was without form.",
    "Amen.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return corpus_tokenizer(model_max_length=48)


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model(VaswaniForConditionalGeneration, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Conversions go to this test's own HF_HOME, never to the user's cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def run(tmp_path, lines: list[str], *options: str) -> tuple[int, list[str]]:
    source, target = tmp_path / "input.txt", tmp_path / "output.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    target.unlink(missing_ok=True)
    code = main(["--input", str(source), "--output", str(target), *options])
    return code, target.read_text(encoding="utf-8").split("\n")[:-1] if target.exists() else []


def one_by_one(model_dir, tokenizer, lines: list[str]) -> list[str]:
    """Greedy translations by `generate()`, one line at a time: what batching must not change."""
    model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
    outputs = []
    for line in lines:
        inputs = tokenizer([line], return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=inputs["input_ids"].shape[1] + 50, do_sample=False)
        outputs.append(tokenizer.decode(generated[0], skip_special_tokens=True) if line.strip() else "")
    return outputs


def test_batching_by_tokens_or_sentences_keeps_input_order(model_dir, tokenizer, tmp_path):
    expected = one_by_one(model_dir, tokenizer, SENTENCES)
    assert len(set(expected)) > 1  # distinct translations, so that a reordering would show
    for batching in (["--batch-size", "2"], ["--max-tokens", "40"], []):
        code, translations = run(tmp_path, SENTENCES, "--model", str(model_dir), "--num-beams", "1", *batching)
        assert code == 0
        assert translations == expected, batching


def test_empty_lines_stay_empty_lines(model_dir, tokenizer, tmp_path):
    lines = ["", SENTENCES[0], "   ", "", SENTENCES[1], ""]
    code, translations = run(tmp_path, lines, "--model", str(model_dir), "--num-beams", "1")
    assert code == 0
    assert translations == one_by_one(model_dir, tokenizer, lines)
    assert [index for index, text in enumerate(translations) if not text] == [0, 2, 3, 5]


def test_long_lines_are_truncated_with_one_warning(model_dir, tmp_path, capsys):
    long_line = " ".join(["light"] * 200)  # far past the tokenizer's 48 tokens and the model's 64 positions
    lines = [long_line, SENTENCES[0], long_line]
    code, translations = run(tmp_path, lines, "--model", str(model_dir), "--num-beams", "2")
    assert code == 0
    assert len(translations) == 3 and translations[0] == translations[2]
    errors = capsys.readouterr().err
    assert errors.count("warning") == 1
    assert "2 line(s) longer than 48 tokens were truncated (the first: line 1)" in errors


def test_reads_stdin_and_writes_stdout(model_dir, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Jesus wept.\r\n\nAmen."))  # CRLF, and no newline at the end
    assert main(["--model", str(model_dir), "--num-beams", "1"]) == 0
    captured = capsys.readouterr()
    expected = one_by_one(model_dir, tokenizer, ["Jesus wept.", "", "Amen."])
    assert captured.out == "".join(line + "\n" for line in expected)
    assert "Translating" in captured.err  # the progress bar


def test_ctranslate2_backend_converts_a_model_folder_once_and_translates_as_generate(model_dir, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    options = ["--model", str(model_dir), "--num-beams", "1"]
    expected = run(tmp_path, SENTENCES, *options)[1]
    code, translations = run(tmp_path, SENTENCES, *options, "--backend", "ctranslate2")
    assert code == 0 and translations == expected
    assert capsys.readouterr().err.count("Converting") == 1
    cached = list((tmp_path / "hf_home" / "vaswani" / "ctranslate2").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.bin").is_file()
    assert run(tmp_path, SENTENCES, *options, "--backend", "ctranslate2")[1] == expected
    assert "Converting" not in capsys.readouterr().err  # the cached conversion was reused
    # The converted folder alone translates too (it carries the tokenizer), and int8 runs.
    exported = ["--model", str(cached[0]), "--backend", "ctranslate2"]
    code, translations = run(tmp_path, SENTENCES, *exported, "--num-beams", "1")
    assert code == 0 and translations == expected
    code, translations = run(tmp_path, SENTENCES, *exported, "--compute-type", "int8")
    assert code == 0 and len(translations) == len(SENTENCES)


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2"])
def test_outputs_stay_within_learned_positions(tokenizer, tmp_path, backend):
    pytest.importorskip("ctranslate2")
    folder = tmp_path / "learned"
    tiny_model(VaswaniForConditionalGeneration, tokenizer, position_embedding_type="learned").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # 48 source tokens would allow 98 output tokens; the decoder has 64 positions, and both backends fail past them.
    code, translations = run(tmp_path, [" ".join(["light"] * 200)], "--model", str(folder), "--backend", backend)
    assert code == 0 and len(translations) == 1


def test_a_saved_model_is_converted_again(model_dir, tokenizer, tmp_path):
    pytest.importorskip("ctranslate2")
    folder = tmp_path / "model"
    tiny_model(VaswaniForConditionalGeneration, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    first = translate_cli.cached_conversion(folder)
    tiny_model(VaswaniForConditionalGeneration, tokenizer, activation_function="gelu").save_pretrained(folder)
    assert translate_cli.cached_conversion(folder) != first
    assert translate_cli.cached_conversion(folder) == translate_cli.cached_conversion(folder)


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2"])
def test_errors_are_one_clear_line(model_dir, tokenizer, tmp_path, capsys, backend):
    pytest.importorskip("ctranslate2")
    code, _ = run(tmp_path, SENTENCES, "--model", str(tmp_path / "missing"), "--backend", backend)
    assert code == 2 and "neither a model folder nor a model on the Hub" in capsys.readouterr().err
    assert main(["--model", str(model_dir), "--backend", backend, "--input", str(tmp_path / "none.txt")]) == 2
    assert "none.txt does not exist" in capsys.readouterr().err
    causal = tmp_path / "causal"
    tiny_model(VaswaniForCausalLM, tokenizer).save_pretrained(causal)
    tokenizer.save_pretrained(causal)
    code, _ = run(tmp_path, SENTENCES, "--model", str(causal), "--backend", backend)
    assert code == 2 and "needs a Vaswani seq2seq model" in capsys.readouterr().err
    code, _ = run(tmp_path, SENTENCES, "--model", str(model_dir), "--backend", backend, "--output", "/no/such/dir/out")
    assert code == 2 and "does not exist" in capsys.readouterr().err


class CreatesAFile:
    """Unpickling this object creates `path`: the test of whether a loader unpickles anything."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("backend", ["transformers", "ctranslate2"])
@pytest.mark.parametrize("how", ["truncated", "padded", "not safetensors", "crafted pickle only"])
def test_damaged_or_pickled_weights_are_one_line_naming_the_file(how, backend, model_dir, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    folder = Path(shutil.copytree(model_dir, tmp_path / "damaged"))
    weights = folder / "model.safetensors"
    data, unpickled = weights.read_bytes(), tmp_path / "unpickled"
    if how == "crafted pickle only":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(CreatesAFile(unpickled)))
    else:
        weights.write_bytes({"truncated": data[:-100], "padded": data + b"\0" * 8, "not safetensors": b"{}" * 50}[how])
    code, translations = run(tmp_path, SENTENCES, "--model", str(folder), "--backend", backend)
    printed = capsys.readouterr().err
    error = printed.splitlines()[-1]  # after "Converting ..." for CTranslate2
    assert code == 2 and translations == [] and "Traceback" not in printed and error.startswith("vaswani-translate:")
    if how == "crafted pickle only":
        assert f"{folder} holds its weights only as pickles (pytorch_model.bin), which vaswani does not load" in error
        assert "weights_only" not in error and not unpickled.exists()
    else:
        assert f"vaswani-translate: error: --model: cannot read the weights {weights}, damaged or truncated" in error


def test_input_that_is_not_utf8_names_its_lines_and_translates_nothing(model_dir, tmp_path, monkeypatch, capsys):
    data = "Jesus wept.\n".encode() + b"caf\xe9\nAmen.\n\xff\xfe\n"  # lines 2 and 4: Latin-1 and UTF-16 bytes
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape"))
    assert main(["--model", str(model_dir), "--num-beams", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "vaswani-translate: error: --input: cannot read stdin as UTF-8 text: line 2 and 1 more is not UTF-8; "
        "convert the text to UTF-8 (for example with iconv) and translate it again.\n"
    )
    source = tmp_path / "latin1.txt"
    source.write_bytes(data)
    assert main(["--model", str(model_dir), "--input", str(source)]) == 2
    assert f"cannot read {source} as UTF-8 text: line 2 and 1 more is not UTF-8" in capsys.readouterr().err


def test_without_ctranslate2_the_backend_says_what_to_install(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ctranslate2_export, "ctranslate2", None)
    code, _ = run(tmp_path, SENTENCES, "--model", str(model_dir), "--backend", "ctranslate2")
    assert code == 2
    assert 'pip install "vaswani[ctranslate2]"' in capsys.readouterr().err


def test_length_batches_respect_the_budget_and_cover_every_line_once():
    lengths = {index: length for index, length in enumerate([5, 30, 12, 12, 7, 50, 3, 9])}
    batches = list(length_batches(lengths, max_tokens=40, batch_size=None))
    assert sorted(index for batch in batches for index in batch) == list(lengths)
    assert batches[0] == [5]  # longest first; alone, since 50 tokens exceed the budget by themselves
    for batch in batches[1:]:
        assert len(batch) * max(lengths[index] for index in batch) <= 40
    assert [len(batch) for batch in length_batches(lengths, max_tokens=None, batch_size=3)] == [3, 3, 2]
