"""Tokenizers for the Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

§5.1: sentences were encoded with byte-pair encoding into a shared source-target vocabulary of about 37000
tokens. `train_tokenizer` trains such a vocabulary on your own text with the `tokenizers` library (Rust, seconds
for megabytes) and returns transformers' generic fast tokenizer (`PreTrainedTokenizerFast`, which transformers 5
saves as `TokenizersBackend`). Everything it does lives in `tokenizer.json` and `tokenizer_config.json`, so a
checkpoint's tokenizer loads with `AutoTokenizer.from_pretrained` without remote code and without this package.

Special tokens have fixed ids, the defaults of `VaswaniConfig` (`mask_token_id` is the MLM mask):

| token    | id | role                                                                  |
|----------|----|-----------------------------------------------------------------------|
| `<pad>`  | 0  | padding, ignored by attention                                         |
| `<s>`    | 1  | decoder start (seq2seq) and start of every causal-LM sequence         |
| `</s>`   | 2  | end of every sequence: the model learns to stop by predicting it      |
| `<unk>`  | 3  | characters WordPiece and Unigram never saw (byte-level BPE has none)  |
| `<mask>` | 4  | masked-LM target; absorbs the space before it, as in RoBERTa          |

Templates, what `tokenizer(text)` and `tokenizer(a, b)` add for each use:
- encoder input, masked LM, classification and seq2seq labels (`tokenizer(text_target=...)`): the tokenizer
  `train_tokenizer` returns, `A </s>` and `A </s> B </s>`. Seq2seq models shift the labels right behind
  `decoder_start_token_id` (`<s>`), so labels `A </s>` give the decoder input `<s> A`.
- causal-LM prompts for `generate()` and the text-generation pipeline: `causal_lm_tokenizer(tokenizer)`,
  `<s> A` (and `<s> A <s> B`), padded on the left. Save this one with a causal-LM checkpoint.
- causal-LM training text: `causal_lm_tokenizer(tokenizer, add_eos_token=True)`, `<s> A </s>` (and
  `<s> A </s> <s> B </s>`). Both causal-LM templates are transformers' own `add_bos_token` / `add_eos_token`.

Models (`model=`):
- `"bpe"` (default): byte-level BPE (GPT-2's pre-tokenizer, no prefix space). Lossless: `decode(encode(text))`
  returns any Unicode text unchanged, whitespace runs, tabs and newlines included, and nothing is ever `<unk>`.
  The only exception is a literal `<mask>` in the text, which takes the space before it (see above).
- `"wordpiece"`: BERT's cased WordPiece. It does not round-trip whitespace (runs of spaces, tabs and newlines
  come back as single spaces; leading and trailing whitespace is dropped), separates punctuation and CJK
  characters with spaces on decoding except where BERT's clean-up removes them, and replaces a word holding a
  character it never saw by `<unk>`.
- `"unigram"`: SentencePiece-style Unigram over `▁`-marked words. It keeps inner and trailing spaces, drops one
  leading space, and replaces characters it never saw (often tabs, newlines, emoji) by `<unk>`. It needs one
  vocabulary entry per distinct character of the training text.
"""

import copy
import itertools
import logging
from collections.abc import Iterable, Iterator

import datasets
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


logger = logging.getLogger(__name__)

# Dict order is id order: the trainers give the special tokens the first ids, in the order they are listed.
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
MODELS = ("bpe", "wordpiece", "unigram")
BYTE_LEVEL_ALPHABET_SIZE = len(pre_tokenizers.ByteLevel.alphabet())
TEXT_BATCH_SIZE = 1000
# The longest word (pre-tokenizer piece: characters, or bytes for byte-level BPE) the trainers see; longer ones are
# cut into pieces this long. BPE's merges take time quadratic in a word's length (one 1 MB line without whitespace
# trained for hours) and Unigram's can crash on such a word. Words of real text, CJK clauses included, are far
# shorter, so they train exactly as without the bound; encoding is not bounded and keeps long words whole.
MAX_TRAINING_WORD_LENGTH = 1000


def special_added_tokens() -> dict[str, AddedToken]:
    """The special tokens as `AddedToken`s: never split, never normalized, skipped by `skip_special_tokens`."""
    # lstrip: "Hello <mask>." must encode as "Hello" "<mask>" "." for fill-mask, not "Hello" " " "<mask>" ".",
    # because byte-level BPE predicts words with their leading space ("Ġworld").
    return {
        name: AddedToken(content, special=True, normalized=False, lstrip=(name == "mask_token"))
        for name, content in SPECIAL_TOKENS.items()
    }


def byte_level_bpe_backend() -> Tokenizer:
    backend = Tokenizer(models.BPE())
    # No prefix space: a space added before the text would come back on decoding and break the round trip.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def wordpiece_backend() -> Tokenizer:
    backend = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    # Cased and with accents, as the translation task needs; CJK characters become words of their own.
    backend.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    return backend


def unigram_backend() -> Tokenizer:
    backend = Tokenizer(models.Unigram())
    # "first": only the start of the text gets a "▁"; "always" would also give one to the text after each
    # special token, so that "Hello <mask>." would decode as "Hello<mask> .".
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    return backend


BACKENDS = {"bpe": byte_level_bpe_backend, "wordpiece": wordpiece_backend, "unigram": unigram_backend}


def build_trainer(model: str, vocab_size: int, min_frequency: int, show_progress: bool) -> trainers.Trainer:
    special_tokens = list(special_added_tokens().values())
    if model == "bpe":
        # Every byte is in the vocabulary from the start, so no text can ever need <unk>.
        return trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    if model == "wordpiece":
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            show_progress=show_progress,
        )
    # Unigram prunes a large seed vocabulary by likelihood instead of counting merges: it has no min_frequency.
    return trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        unk_token=SPECIAL_TOKENS["unk_token"],
        show_progress=show_progress,
    )


def minimum_vocab_size(model: str) -> int:
    """The smallest vocabulary that can exist whatever the text: byte-level BPE starts from all 256 bytes."""
    if model == "bpe":
        return len(SPECIAL_TOKENS) + BYTE_LEVEL_ALPHABET_SIZE
    return len(SPECIAL_TOKENS) + 1


def check_training_arguments(texts, model: str, vocab_size: int) -> None:
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {', '.join(MODELS)}.")
    if isinstance(texts, str):
        raise TypeError("texts is a single string; pass an iterable of strings, e.g. a list or a dataset column.")
    if vocab_size < minimum_vocab_size(model):
        raise ValueError(
            f"vocab_size={vocab_size} is too small for model={model!r}: the {len(SPECIAL_TOKENS)} special tokens"
            + (f" and the {BYTE_LEVEL_ALPHABET_SIZE} bytes" if model == "bpe" else "")
            + f" alone need {minimum_vocab_size(model)}. Use a vocab_size of at least {minimum_vocab_size(model)}."
        )


def text_batches(texts, text_column: str) -> tuple[Iterator[list[str]], int | None]:
    """Lists of strings from `texts` (an iterable of strings, a dataset, or a dataset column), and their number
    of strings when it is known (it sizes the progress bar). Datasets are read in Arrow batches, which is ~100x
    faster than iterating a column row by row."""
    if isinstance(texts, (datasets.Column, datasets.IterableColumn)):
        texts, text_column = texts.source, texts.column_name
    if isinstance(texts, (datasets.Dataset, datasets.IterableDataset)):
        if texts.column_names is not None and text_column not in texts.column_names:
            raise ValueError(
                f"The dataset has no column {text_column!r} (columns: {', '.join(texts.column_names)}); "
                "pass text_column=... or the column itself."
            )
        rows = texts.select_columns([text_column]).iter(batch_size=TEXT_BATCH_SIZE)
        batches = (row_batch[text_column] for row_batch in rows)
        return batches, (len(texts) if isinstance(texts, datasets.Dataset) else None)
    length = len(texts) if hasattr(texts, "__len__") else None
    strings = iter(texts)
    batches = iter(lambda: list(itertools.islice(strings, TEXT_BATCH_SIZE)), [])
    return batches, length


class TextPresence:
    """Passes batches through and records whether any of them held a non-empty string, and whether any held a run
    of more than MAX_TRAINING_WORD_LENGTH characters without whitespace."""

    def __init__(self, batches: Iterator[list[str]]):
        self.batches = batches
        self.found_text = False
        self.found_long_word = False

    def __iter__(self) -> Iterator[list[str]]:
        for batch in self.batches:
            # `any` stops at the first non-empty string, so this costs nothing once text has been seen.
            self.found_text = self.found_text or any(batch)
            self.found_long_word = self.found_long_word or any(holds_long_word(text) for text in batch if text)
            yield batch


def holds_long_word(text: str) -> bool:
    # Only the rare string longer than the bound is split into words.
    return len(text) > MAX_TRAINING_WORD_LENGTH and max(map(len, text.split())) > MAX_TRAINING_WORD_LENGTH


def bounded_words(pre_tokenizer: pre_tokenizers.PreTokenizer) -> pre_tokenizers.PreTokenizer:
    """`pre_tokenizer`, then each word longer than MAX_TRAINING_WORD_LENGTH cut into pieces at most that long."""
    cut = pre_tokenizers.Split(Regex(rf"[\s\S]{{1,{MAX_TRAINING_WORD_LENGTH}}}"), behavior="isolated")
    return pre_tokenizers.Sequence([pre_tokenizer, cut])


def train_backend(backend: Tokenizer, trainer: trainers.Trainer, batches: TextPresence, length: int | None, model: str):
    pre_tokenizer = backend.pre_tokenizer
    backend.pre_tokenizer = bounded_words(pre_tokenizer)  # for training only: the saved tokenizer is unchanged
    try:
        backend.train_from_iterator(batches, trainer=trainer, length=length)
    except Exception as error:
        # The Unigram trainer fails with a bare Exception when the characters do not fit; say what to change.
        if model == "unigram" and "not large enough" in str(error):
            raise ValueError(
                f"vocab_size={trainer.vocab_size} is too small for model='unigram', which needs one entry for each "
                "distinct character of the text plus the special tokens. Raise vocab_size, or use model='bpe', "
                f"whose alphabet is {BYTE_LEVEL_ALPHABET_SIZE} bytes whatever the text."
            ) from error
        raise
    finally:
        backend.pre_tokenizer = pre_tokenizer
    if not batches.found_text:
        raise ValueError("texts holds no text (no non-empty string): there is nothing to train a tokenizer on.")
    if batches.found_long_word:
        logger.warning(
            "texts holds words of more than %d characters without whitespace: training cut them into pieces of %d "
            "(training time grows with the square of a word's length); encoding keeps them whole.",
            MAX_TRAINING_WORD_LENGTH,
            MAX_TRAINING_WORD_LENGTH,
        )


def check_trained_vocab_size(backend: Tokenizer, model: str, vocab_size: int) -> None:
    trained_size = backend.get_vocab_size()
    if trained_size > vocab_size:
        # WordPiece keeps every character it saw, however small vocab_size is.
        raise ValueError(
            f"vocab_size={vocab_size} is too small for model={model!r}: the special tokens and the characters of "
            f"this text alone take {trained_size} entries. Raise vocab_size well above {trained_size}, or use "
            f"model='bpe', whose alphabet is {BYTE_LEVEL_ALPHABET_SIZE} bytes whatever the text."
        )
    if trained_size < vocab_size:
        logger.warning(
            "The text only supports %d tokens of the %d asked for (too little text, or min_frequency too high).",
            trained_size,
            vocab_size,
        )
    token_ids = {content: backend.token_to_id(content) for content in SPECIAL_TOKENS.values()}
    if list(token_ids.values()) != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"The trainer placed the special tokens at {token_ids}, not at ids 0-4.")


def wrap_backend(backend: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """transformers' generic fast tokenizer around `backend`, with the encoder template `A </s>`."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **special_added_tokens(),
        add_bos_token=False,
        add_eos_token=True,
        model_max_length=model_max_length,
    )


def train_tokenizer(
    texts: Iterable[str] | datasets.Dataset | datasets.IterableDataset,
    vocab_size: int = 37000,
    model: str = "bpe",
    min_frequency: int = 2,
    model_max_length: int = 1024,
    show_progress: bool = True,
    text_column: str = "text",
) -> PreTrainedTokenizerFast:
    """Train a shared source-target vocabulary (§5.1) on `texts` and return a transformers fast tokenizer.

    Args:
        texts: an iterable of strings (a list, a generator, a `datasets` column such as `dataset["text"]`), or a
            `datasets.Dataset` / `IterableDataset`, whose `text_column` is read.
        vocab_size: the most tokens, special tokens included (the paper: about 37000). Byte-level BPE needs at
            least 5 + 256; fewer tokens than asked are learned when the text is too small.
        model: "bpe" (byte-level, lossless, the default), "wordpiece" or "unigram"; see the module docstring
            for what the last two lose.
        min_frequency: the fewest occurrences a merge needs to enter the vocabulary (BPE, WordPiece).
        model_max_length: the length `truncation=True` cuts to; keep it within the model's
            `max_position_embeddings`.
        show_progress: show the trainer's progress bar.
        text_column: the column to read when `texts` is a dataset.

    Returns:
        The encoder / seq2seq tokenizer (template `A </s>`); `causal_lm_tokenizer` derives the causal-LM one.

    Words longer than MAX_TRAINING_WORD_LENGTH (1000) characters, such as a long line without whitespace, are cut
    into pieces that long for training, with a warning, so that training time stays linear in the text's size.
    """
    check_training_arguments(texts, model, vocab_size)
    batches, length = text_batches(texts, text_column)
    batches = TextPresence(batches)
    backend = BACKENDS[model]()
    trainer = build_trainer(model, vocab_size, min_frequency, show_progress)
    train_backend(backend, trainer, batches, length, model)
    check_trained_vocab_size(backend, model, vocab_size)
    return wrap_backend(backend, model_max_length)


def causal_lm_tokenizer(tokenizer: PreTrainedTokenizerFast, add_eos_token: bool = False) -> PreTrainedTokenizerFast:
    """A copy of `tokenizer` for the causal LM: every sequence starts with `<s>`, padding goes on the left.

    With `add_eos_token=False` (save this one with a causal-LM checkpoint) texts encode as `<s> A`, so prompts
    for `generate()` and the text-generation pipeline (which calls the tokenizer with its default
    `add_special_tokens=True`) do not end the text they ask to continue. With `add_eos_token=True` (training
    data) texts encode as `<s> A </s>`, so the model learns where a text ends; truncation keeps both tokens.
    """
    variant = copy.deepcopy(tokenizer)
    # Set both flags: transformers does not save them, so a loaded tokenizer reads False for both whatever its
    # tokenizer.json does, and each assignment rebuilds the template from the two flags.
    variant.add_bos_token = True
    variant.add_eos_token = add_eos_token
    # Decoder-only generation appends new tokens on the right, so the padding must be on the left. save_pretrained
    # only writes init arguments.
    variant.padding_side = "left"
    variant.init_kwargs["padding_side"] = "left"
    return variant


__all__ = ["SPECIAL_TOKENS", "causal_lm_tokenizer", "train_tokenizer"]
