"""`vaswani-translate`: input order and line structure survive batching, long lines, both backends, and errors;
n-best lists, scores, target prefixes and sampling agree across backends."""

import copy
import importlib.util
import io
import json
import pickle
import shutil
import sys
from pathlib import Path
from statistics import mean

import numpy as np
import pytest
import torch

from conftest import corpus_tokenizer, tiny_model
from vaswani import VaswaniForCausalLM, VaswaniForConditionalGeneration
from vaswani.modeling import ctranslate2_export, translate_cli, translation_backends
from vaswani.modeling.translate_cli import length_batches, main, source_pieces, token_budget_chunks

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


def test_with_no_split_long_lines_are_truncated_with_one_warning(model_dir, tmp_path, capsys):
    long_line = " ".join(["light"] * 200)  # far past the tokenizer's 48 tokens and the model's 64 positions
    lines = [long_line, SENTENCES[0], long_line]
    code, translations = run(tmp_path, lines, "--model", str(model_dir), "--num-beams", "2", "--no-split")
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
    # Scored hypotheses get an end token appended, and a prefix takes positions too: still within the 64.
    line = " ".join(["light"] * 40) + "\tY dijo Dios"
    options = ["--model", str(folder), "--backend", backend, "--n-best", "2", "--num-beams", "2", "--no-split"]
    code, output = run(tmp_path, [line], *options, "--format", "jsonl", "--target-prefix", "--output-tokens")
    assert code == 0 and max(len(h["tokens"]) for h in json.loads(output[0])["hypotheses"]) <= 64


def test_a_saved_model_is_converted_again(model_dir, tokenizer, tmp_path):
    pytest.importorskip("ctranslate2")
    folder = tmp_path / "model"
    tiny_model(VaswaniForConditionalGeneration, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    first = translation_backends.cached_conversion(folder)
    tiny_model(VaswaniForConditionalGeneration, tokenizer, activation_function="gelu").save_pretrained(folder)
    assert translation_backends.cached_conversion(folder) != first
    assert translation_backends.cached_conversion(folder) == translation_backends.cached_conversion(folder)


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


# ----------------------------------------------------------------------------------------------- n-best, scores


BACKENDS = ["transformers", "ctranslate2"]
# The random tiny model's best hypotheses of these decode to text that encodes back to the same tokens (some
# hypotheses of the other sentences end inside a UTF-8 character), so that --score can score them as text.
ROUND_TRIP = [SENTENCES[0], SENTENCES[1], SENTENCES[3]]


def records(tmp_path, lines: list[str], *options: str) -> list[dict]:
    code, output = run(tmp_path, lines, "--format", "jsonl", *options)
    assert code == 0
    return [json.loads(line) for line in output]


def needs_backend(backend: str) -> None:
    if backend == "ctranslate2":
        pytest.importorskip("ctranslate2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_n_best_hypotheses_are_ranked_and_scored_as_score_scores_them(model_dir, tokenizer, tmp_path, backend):
    needs_backend(backend)
    options = ["--model", str(model_dir), "--backend", backend, "--num-beams", "3"]
    found = records(tmp_path, ROUND_TRIP, *options, "--n-best", "3", "--length-penalty", "0.6", "--output-tokens")
    for record, source in zip(found, ROUND_TRIP):
        assert record["source"] == source and record["length_penalty"] == 0.6 and len(record["hypotheses"]) == 3
        scores = [hypothesis["score"] for hypothesis in record["hypotheses"]]
        assert scores == sorted(scores, reverse=True)
        for hypothesis in record["hypotheses"]:
            assert hypothesis["num_tokens"] == len(hypothesis["tokens"]) == len(hypothesis["token_log_probs"])
            assert hypothesis["tokens"][-1] == tokenizer.eos_token  # the end token is scored too
            assert hypothesis["log_prob"] == pytest.approx(sum(hypothesis["token_log_probs"]))
            assert hypothesis["mean_log_prob"] == pytest.approx(hypothesis["log_prob"] / hypothesis["num_tokens"])
            assert hypothesis["score"] == pytest.approx(hypothesis["log_prob"] / hypothesis["num_tokens"] ** 0.6)
    best = [record["hypotheses"][0] for record in found]
    for hypothesis in best:  # the precondition of scoring them as text
        assert tokenizer.convert_ids_to_tokens(tokenizer(text_target=hypothesis["translation"])["input_ids"]) == (
            hypothesis["tokens"]
        )
    pairs = [f"{source}\t{hypothesis['translation']}" for source, hypothesis in zip(ROUND_TRIP, best)]
    rescored = records(tmp_path, pairs, "--model", str(model_dir), "--backend", backend, "--score")
    for hypothesis, score in zip(best, rescored):
        assert score["num_tokens"] == hypothesis["num_tokens"]
        assert score["log_prob"] == pytest.approx(hypothesis["log_prob"], abs=1e-3 * hypothesis["num_tokens"])


def test_n_best_text_layout_is_n_lines_per_input_line(model_dir, tmp_path):
    lines = [SENTENCES[0], "", SENTENCES[4]]
    code, output = run(tmp_path, lines, "--model", str(model_dir), "--n-best", "2", "--num-beams", "2")
    assert code == 0 and len(output) == 6
    assert output[2:4] == ["", ""]  # an empty line keeps its N lines
    for row in output[:2] + output[4:]:
        log_prob, mean, translation = row.split("\t")
        assert float(log_prob) < float(mean) < 0 and translation
    best = [row.split("\t")[2] for row in (output[0], output[4])]
    assert best == run(tmp_path, [lines[0], lines[2]], "--model", str(model_dir), "--num-beams", "2")[1]


def test_backends_give_the_same_hypotheses_and_scores(model_dir, tmp_path):
    pytest.importorskip("ctranslate2")
    options = ["--model", str(model_dir), "--num-beams", "2", "--n-best", "2", "--output-tokens"]
    generate, ctranslate2 = (records(tmp_path, SENTENCES, *options, "--backend", name) for name in BACKENDS)
    for ours, theirs in zip(generate, ctranslate2):
        assert [h["tokens"] for h in ours["hypotheses"]] == [h["tokens"] for h in theirs["hypotheses"]]
        for mine, other in zip(ours["hypotheses"], theirs["hypotheses"]):
            np.testing.assert_allclose(mine["token_log_probs"], other["token_log_probs"], atol=1e-3)


def scored_pairs(tmp_path, model_dir, rows: list[str], *options: str) -> list[dict]:
    return records(tmp_path, rows, "--model", str(model_dir), "--score", *options)


def test_score_mode_gives_the_models_log_probabilities_on_both_backends(model_dir, tokenizer, tmp_path):
    pairs = [("Jesus wept.", "Jesús lloró."), ("In the beginning", "En el principio"), ("", "Amén.")]
    found = scored_pairs(tmp_path, model_dir, [f"{source}\t{target}" for source, target in pairs])
    model = VaswaniForConditionalGeneration.from_pretrained(model_dir).eval()
    for (source, target), score in zip(pairs, found):
        assert (score["source"], score["target"]) == (source, target)
        labels = tokenizer(text_target=[target], return_tensors="pt")["input_ids"]
        with torch.no_grad():  # the model's own loss: the mean negative log-likelihood of the labels
            loss = model(**tokenizer([source], return_tensors="pt"), labels=labels).loss.item()
        assert score["num_tokens"] == labels.shape[1]
        assert score["log_prob"] == pytest.approx(-loss * labels.shape[1], abs=1e-4)
    rows = [f"{source}\t{target}" for source, target in pairs]
    code, text = run(tmp_path, rows, "--model", str(model_dir), "--score")
    assert code == 0
    assert [[float(value) for value in row.split("\t")] for row in text] == [
        [round(score["log_prob"], 4), round(score["mean_log_prob"], 4), score["num_tokens"]] for score in found
    ]
    if importlib.util.find_spec("ctranslate2") is not None:  # float32 CTranslate2 agrees within 1e-3 per token
        ct2 = scored_pairs(tmp_path, model_dir, rows, "--backend", "ctranslate2")
        for ours, theirs in zip(found, ct2):
            assert abs(ours["log_prob"] - theirs["log_prob"]) <= 1e-3 * ours["num_tokens"]


def test_score_reads_json_lines_with_named_fields(model_dir, tmp_path):
    pairs = [("Jesus wept.", "Jesús lloró."), ("Amen.", "Amén.")]
    from_tsv = scored_pairs(tmp_path, model_dir, [f"{source}\t{target}" for source, target in pairs])
    rows = [json.dumps({"en": source, "es": target, "id": 1}) for source, target in pairs]
    options = ["--input-format", "jsonl", "--source-field", "en", "--target-field", "es"]
    assert scored_pairs(tmp_path, model_dir, rows, *options) == from_tsv


# ----------------------------------------------------------------------------------------------- target prefixes


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_prefixes_start_their_translations(model_dir, tmp_path, backend):
    needs_backend(backend)
    prefixes = ["Y dijo", "", "En el principio", "La tierra"]  # of different lengths, in one batch; one without
    lines = [f"{source}\t{prefix}" if prefix else source for source, prefix in zip(SENTENCES, prefixes)]
    options = ["--model", str(model_dir), "--backend", backend, "--num-beams", "2"]
    code, translations = run(tmp_path, lines, *options, "--target-prefix")
    assert code == 0
    for translation, prefix in zip(translations, prefixes):
        assert translation.startswith(prefix) and len(translation) > len(prefix)
    assert translations[1] == run(tmp_path, [SENTENCES[1]], *options)[1][0]  # no prefix: as without the option
    found = records(tmp_path, lines, *options, "--target-prefix")
    assert [record["target_prefix"] for record in found] == prefixes
    assert [record["hypotheses"][0]["translation"] for record in found] == translations


def test_both_backends_continue_a_prefix_alike(model_dir, tmp_path):
    pytest.importorskip("ctranslate2")
    lines = [f"{SENTENCES[1]}\tEn el principio", f"{SENTENCES[0]}\tY"]
    outputs = [run(tmp_path, lines, "--model", str(model_dir), "--backend", name, "--target-prefix", "--num-beams",
                   "1")[1] for name in BACKENDS]  # fmt: skip
    assert outputs[0] == outputs[1]


# ----------------------------------------------------------------------------------------------- long lines


@pytest.fixture(scope="module")
def short_model_dir(tokenizer, tmp_path_factory):
    """The tiny model with a tokenizer that takes at most 24 tokens, so that three verses make a long line."""
    folder = tmp_path_factory.mktemp("short")
    tiny_model(VaswaniForConditionalGeneration, tokenizer).save_pretrained(folder)
    short = copy.deepcopy(tokenizer)
    short.model_max_length = 24
    short.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_line_comes_back_as_its_sentences_translated_and_joined(short_model_dir, tmp_path, capsys, backend):
    needs_backend(backend)
    sentences = [SENTENCES[0], SENTENCES[1], SENTENCES[3]]  # 10, 34 and 21 tokens: the middle one is cut in two
    options = ["--model", str(short_model_dir), "--backend", backend, "--num-beams", "1"]
    code, alone = run(tmp_path, [sentences[0], sentences[2]], *options)
    assert code == 0 and all(alone)
    code, translations = run(tmp_path, [SENTENCES[4], " ".join(sentences), SENTENCES[4]], *options)
    assert code == 0 and len(translations) == 3 and translations[0] == translations[2]
    assert translations[1].startswith(alone[0] + " ") and translations[1].endswith(" " + alone[1])
    errors = capsys.readouterr().err
    assert "1 line(s) longer than 24 tokens were split" in errors and "truncated" not in errors
    code, truncated = run(tmp_path, [" ".join(sentences)], *options, "--no-split")
    assert code == 0 and "truncated" in capsys.readouterr().err
    assert truncated[0] != translations[1]  # the truncated line is translated as one input


def test_long_lines_are_split_into_sentences_then_at_the_token_budget(tokenizer):
    verse = "Let there be " + " ".join(["light"] * 60)  # one sentence of 63 words, far more than 24 tokens
    lines = {0: f"{SENTENCES[0]} {verse}. {SENTENCES[4]}", 1: SENTENCES[3]}
    pieces = source_pieces(tokenizer, lines, max_length=24, split=True)
    assert pieces[(1, 0)] == tokenizer(SENTENCES[3])["input_ids"]  # a line that fits stays one piece
    first = [pieces[key] for key in sorted(pieces) if key[0] == 0]
    assert all(len(ids) <= 24 and ids[-1] == tokenizer.eos_token_id for ids in first)
    expected = [tokenizer(text)["input_ids"][:-1] for text in (SENTENCES[0], verse + ".", SENTENCES[4])]
    assert [token for ids in first for token in ids[:-1]] == [token for ids in expected for token in ids]
    assert len(first) > 3  # the long sentence became several pieces
    assert token_budget_chunks([1, 2, 3, 4, 5, 0], max_length=3, eos_token_id=0) == [[1, 2, 0], [3, 4, 0], [5, 0]]


# ----------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_is_reproducible_with_a_seed_and_differs_across_seeds(model_dir, tmp_path, backend):
    needs_backend(backend)
    options = ["--model", str(model_dir), "--backend", backend, "--sampling-topk", "0"]
    first = run(tmp_path, SENTENCES, *options, "--seed", "1")[1]
    assert run(tmp_path, SENTENCES, *options, "--seed", "1")[1] == first
    assert run(tmp_path, SENTENCES, *options, "--seed", "2")[1] != first
    greedy = run(tmp_path, SENTENCES, "--model", str(model_dir), "--backend", backend, "--num-beams", "1")[1]
    assert first != greedy
    assert run(tmp_path, SENTENCES, *options[:-1], "1", "--seed", "3")[1] == greedy  # top-1 sampling is greedy
    # A high temperature flattens the distribution: the samples are far less likely under the model.
    scores = [
        mean(hypothesis["mean_log_prob"] for record in records(tmp_path, SENTENCES, *options, "--seed", "1",
             "--sampling-temperature", temperature, "--n-best", "2") for hypothesis in record["hypotheses"])
        for temperature in ("0.5", "5")
    ]  # fmt: skip
    assert scores[0] > scores[1] + 1


# ----------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "options, message",
    [
        (["--n-best", "5", "--num-beams", "2"], "--n-best 5 needs --num-beams 5 or more"),
        (["--seed", "1"], "--seed applies to sampling"),
        (["--sampling-temperature", "2"], "--sampling-temperature applies to sampling"),
        (["--sampling-topk", "5", "--num-beams", "4"], "leave out --num-beams"),
        (["--output-tokens"], "add --format jsonl"),
        (["--score", "--n-best", "2", "--num-beams", "2"], "--score scores the given targets"),
        (["--input-format", "jsonl"], "--input-format is --score's"),
        (["--score"], "line 1 has 1 tab-separated column(s)"),
        (["--score", "--input-format", "jsonl"], "line 1 is not JSON"),
    ],
)
def test_options_that_do_not_go_together_are_refused_in_one_line(model_dir, tmp_path, capsys, options, message):
    code, _ = run(tmp_path, SENTENCES, "--model", str(model_dir), *options)
    errors = capsys.readouterr().err
    assert code == 2 and message in errors and "Traceback" not in errors


def test_json_pairs_without_the_fields_are_refused(model_dir, tmp_path, capsys):
    rows = [json.dumps({"source": "Amen.", "target": "Amén."}), json.dumps({"en": "Amen."})]
    code, _ = run(tmp_path, rows, "--model", str(model_dir), "--score", "--input-format", "jsonl")
    assert code == 2 and "line 2 is not an object with the string fields 'source' and 'target'" in (
        capsys.readouterr().err
    )


def test_a_backend_without_a_feature_refuses_its_option(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(translate_cli.TransformersBackend, "features", frozenset({translate_cli.N_BEST}))
    code, _ = run(tmp_path, ["Amen.\tAmén."], "--model", str(model_dir), "--score")
    assert code == 2 and "--score: --backend transformers has no scores" in capsys.readouterr().err
    code, _ = run(tmp_path, SENTENCES, "--model", str(model_dir), "--n-best", "2", "--num-beams", "2")
    assert code == 2 and "--n-best: --backend transformers has no scores" in capsys.readouterr().err
