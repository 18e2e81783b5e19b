"""`Seq2SeqTrainer` on token-count batches (`TokenBatchSeq2SeqTrainer`) against `group_by_length`: padding and speed.

    python benchmarks/trainer_token_batches.py [--batch-size 32] [--max-tokens auto] [--steps 20] [--rounds 3]

Data: the English -> Spanish train split of the embedded corpus, tokenized with a shared 4000-token vocabulary,
truncated to `--max-length` 64. Model: a tiny Vaswani seq2seq (d_model 64, 2 + 2 layers, 4 heads, d_ff 256).

A: `Seq2SeqTrainer(train_sampling_strategy="group_by_length", per_device_train_batch_size=B)`, transformers' answer
   (its `LengthGroupedSampler` sorts mega-batches of 50 batches by source length).
B: `TokenBatchSeq2SeqTrainer(max_tokens=M)`: batches of at most M padded tokens per side, sorted by the longer side.
   `--max-tokens auto` takes M = B x the mean example size, so that both hold about B examples per batch on average.

Printed per arm: the padding share of a whole epoch's batches (source and target positions that are padding, from
the samplers' batch lists: no timing involved), the mean examples per batch, and the examples/s of `--steps`
training steps timed around `trainer.train()` (counted by the collator), the median over `--rounds` rounds in
alternating order (AB, BA, ...) so that a shared machine's load falls on both alike; the ratio is B over A.
"""

import argparse
import statistics
import sys
import time

import torch
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from vaswani import VaswaniConfig, VaswaniForConditionalGeneration, train_tokenizer
from vaswani.training.batching import example_sizes, padding_fraction
from vaswani.training.corpus import load_parallel_corpus
from vaswani.training.data import tokenize_pairs
from vaswani.training.trainer_batching import TokenBatchSeq2SeqTrainer, token_batch_sampler


def tokenized_train_split(max_length: int):
    corpus = load_parallel_corpus().select_columns(["en", "es"])
    texts = [text for row in corpus["train"] for text in row.values()]
    tokenizer = train_tokenizer(texts, 4000, model_max_length=max_length, show_progress=False)
    return tokenize_pairs(corpus, tokenizer, "en", "es", max_length)["train"], tokenizer


def tiny_model(tokenizer) -> VaswaniForConditionalGeneration:
    torch.manual_seed(0)
    config = VaswaniConfig.from_tokenizer(
        tokenizer, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=128,
    )  # fmt: skip
    return VaswaniForConditionalGeneration(config)


class CountingCollator:
    """`DataCollatorForSeq2Seq` that counts the examples it collated."""

    def __init__(self, collator):
        self.collator, self.examples = collator, 0

    def __call__(self, features):
        self.examples += len(features)
        return self.collator(features)


def epoch_batches(arm: str, data, batch_size: int, max_tokens: int) -> list[list[int]]:
    """One epoch's batch lists, as each arm's sampler builds them."""
    if arm == "token batches":
        return list(token_batch_sampler(data, max_tokens, seed=0))
    sampler = LengthGroupedSampler(batch_size, lengths=[len(ids) for ids in data["input_ids"]])
    order = list(sampler)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def timed_examples_per_second(arm: str, data, tokenizer, options) -> float:
    model = tiny_model(tokenizer)
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, model=model))
    args = Seq2SeqTrainingArguments(
        output_dir="/tmp/trainer-token-batches", max_steps=options.steps, learning_rate=1e-3, warmup_steps=0,
        per_device_train_batch_size=options.batch_size, report_to="none", save_strategy="no", use_cpu=True,
        disable_tqdm=True, logging_strategy="no", seed=0, train_sampling_strategy="group_by_length",
    )  # fmt: skip
    common = dict(model=model, args=args, train_dataset=data, data_collator=collator, processing_class=tokenizer)
    if arm == "token batches":
        trainer = TokenBatchSeq2SeqTrainer(**common, max_tokens=options.max_tokens)
    else:
        trainer = Seq2SeqTrainer(**common)
    start = time.perf_counter()
    trainer.train()
    return collator.examples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="examples per batch of group_by_length")
    parser.add_argument("--max-tokens", default="auto", help="tokens per side of a token batch, or auto")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    data, tokenizer = tokenized_train_split(options.max_length)
    sizes = example_sizes(data)
    if options.max_tokens == "auto":
        options.max_tokens = round(options.batch_size * statistics.mean(sizes))
    options.max_tokens = max(int(options.max_tokens), max(sizes))
    arms = ["group_by_length", "token batches"]
    speeds = {arm: [] for arm in arms}
    for round_index in range(options.rounds):
        for arm in arms if round_index % 2 == 0 else arms[::-1]:
            speeds[arm].append(timed_examples_per_second(arm, data, tokenizer, options))
            print(f"round {round_index + 1} {arm}: {speeds[arm][-1]:.0f} examples/s", file=sys.stderr)
    print(f"{len(data)} pairs, batch size {options.batch_size} vs max_tokens {options.max_tokens}, "
          f"{options.steps} steps x {options.rounds} rounds, {options.threads} threads\n")  # fmt: skip
    print("| arm | padding share (epoch) | examples per batch | examples/s (median, min-max) |\n|---|---:|---:|---:|")
    for arm in arms:
        batches = epoch_batches(arm, data, options.batch_size, options.max_tokens)
        padding, per_batch = padding_fraction(batches, data), len(data) / len(batches)
        low, high = min(speeds[arm]), max(speeds[arm])
        median = statistics.median(speeds[arm])
        print(f"| {arm} | {padding:.1%} | {per_batch:.1f} | {median:.0f} ({low:.0f}-{high:.0f}) |")
    ratios = [token / grouped for token, grouped in zip(speeds["token batches"], speeds["group_by_length"])]
    print(f"\nexamples/s ratio, token batches / group_by_length: {statistics.median(ratios):.2f} "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    print(f"\n`python benchmarks/trainer_token_batches.py --batch-size {options.batch_size} --max-tokens "
          f"{options.max_tokens} --max-length {options.max_length} --steps {options.steps} --rounds {options.rounds} "
          f"--threads {options.threads}`")  # fmt: skip


if __name__ == "__main__":
    main()
