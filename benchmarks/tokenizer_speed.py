"""Training time and batched encoding throughput of the default tokenizer against a GPT-2-style one.

    python benchmarks/tokenizer_speed.py [--vocab-size 37000] [--rounds 7] [--train-rounds 3] [--batch-size 1000]

A: `vaswani.train_tokenizer` (byte-level BPE, template `A </s>`, transformers' generic fast tokenizer).
B: the `tokenizers` library's `ByteLevelBPETokenizer`, wrapped in `GPT2TokenizerFast`, trained the same way:
same text, vocabulary size, minimum frequency and special tokens.

The text is the English and Spanish sides of the embedded translation corpus's train split
(`vaswani.training.corpus`, about 7.5 MB), the shared vocabulary of §5.1. Encoding goes in batches of
`--batch-size` texts, as `Dataset.map(batched=True)` calls a tokenizer. Rounds alternate the order (AB, BA, ...)
so that changes in a shared machine's load fall on both alike; medians (and the best encoding round) are
printed.
"""

import argparse
import json
import os
import statistics
import time

from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2TokenizerFast

from vaswani.tokenization import SPECIAL_TOKENS, train_tokenizer
from vaswani.training.corpus import load_parallel_corpus


MIN_FREQUENCY = 2


def load_texts() -> list[str]:
    train = load_parallel_corpus()["train"]
    return train.to_dict()["en"] + train.to_dict()["es"]


def train_vaswani(texts: list[str], vocab_size: int):
    return train_tokenizer(texts, vocab_size=vocab_size, min_frequency=MIN_FREQUENCY, show_progress=False)


def train_gpt2_style(texts: list[str], vocab_size: int) -> GPT2TokenizerFast:
    byte_level_bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    byte_level_bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS.values()),
        show_progress=False,
    )
    model = json.loads(byte_level_bpe.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    return GPT2TokenizerFast(vocab=model["vocab"], merges=merges, **SPECIAL_TOKENS)


TRAINERS = {"vaswani": train_vaswani, "gpt2-style": train_gpt2_style}


def encode_in_batches(tokenizer, texts: list[str], batch_size: int) -> int:
    """Tokens produced, special tokens included."""
    token_count = 0
    for start in range(0, len(texts), batch_size):
        token_count += sum(map(len, tokenizer(texts[start : start + batch_size])["input_ids"]))
    return token_count


def alternating_order(names: list[str], round_index: int) -> list[str]:
    return names if round_index % 2 == 0 else names[::-1]


def time_training(texts: list[str], vocab_size: int, rounds: int) -> tuple[dict, dict]:
    seconds = {name: [] for name in TRAINERS}
    tokenizers = {}
    for round_index in range(rounds):
        for name in alternating_order(list(TRAINERS), round_index):
            start = time.perf_counter()
            tokenizers[name] = TRAINERS[name](texts, vocab_size)
            seconds[name].append(time.perf_counter() - start)
    return tokenizers, {name: statistics.median(times) for name, times in seconds.items()}


def time_encoding(tokenizers: dict, texts: list[str], batch_size: int, rounds: int) -> tuple[dict, dict]:
    throughputs = {name: [] for name in tokenizers}
    token_counts = {}
    for round_index in range(rounds):
        for name in alternating_order(list(tokenizers), round_index):
            start = time.perf_counter()
            token_counts[name] = encode_in_batches(tokenizers[name], texts, batch_size)
            throughputs[name].append(token_counts[name] / (time.perf_counter() - start))
    return token_counts, throughputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=37000)
    parser.add_argument("--rounds", type=int, default=7, help="encoding rounds per tokenizer")
    parser.add_argument("--train-rounds", type=int, default=3, help="training rounds per tokenizer")
    parser.add_argument("--batch-size", type=int, default=1000, help="texts per tokenizer call")
    args = parser.parse_args()

    texts = load_texts()
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    print(f"text: {len(texts)} texts, {megabytes:.2f} MB (English and Spanish, translation train split)")
    print(f"cpus: {os.cpu_count()}, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}")

    tokenizers, training_seconds = time_training(texts, args.vocab_size, args.train_rounds)
    same_vocabulary = tokenizers["vaswani"].get_vocab() == tokenizers["gpt2-style"].get_vocab()
    sizes = {name: len(tokenizer) for name, tokenizer in tokenizers.items()}
    print(f"vocab_size {args.vocab_size}: trained sizes {sizes}, identical vocabularies: {same_vocabulary}")
    ratio = training_seconds["vaswani"] / training_seconds["gpt2-style"]
    print(
        f"training, median of {args.train_rounds} (s): vaswani {training_seconds['vaswani']:.2f}, "
        f"gpt2-style {training_seconds['gpt2-style']:.2f}, ratio {ratio:.2f}"
    )

    token_counts, throughputs = time_encoding(tokenizers, texts, args.batch_size, args.rounds)
    print(f"tokens per pass (vaswani adds </s> to each text): {token_counts}")
    # The best round is printed too: on a shared machine it is the one least slowed by other work.
    for summary, summarize in (("median", statistics.median), ("best", max)):
        vaswani, gpt2_style = summarize(throughputs["vaswani"]), summarize(throughputs["gpt2-style"])
        print(
            f"encoding, batches of {args.batch_size}, {summary} of {args.rounds} (tokens/s): "
            f"vaswani {vaswani:,.0f}, gpt2-style {gpt2_style:,.0f}, ratio {vaswani / gpt2_style:.2f}"
        )


if __name__ == "__main__":
    main()
