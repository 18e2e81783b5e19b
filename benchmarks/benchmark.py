"""Side-by-side benchmark: each Vaswani view against the transformers model a user would otherwise pick.

Pairs, built at the same size (d_model, layers, heads, d_ff, vocabulary, dropout 0.1, attention and activation
dropout 0, ReLU, tied output projection, the same attention implementation):

| pair      | ours (A)                          | reference (B)                                                     |
|-----------|-----------------------------------|-------------------------------------------------------------------|
| `seq2seq` | `VaswaniForConditionalGeneration` | `MarianMTModel`: post-LN, sinusoids, scaled shared embeddings     |
| `mlm`     | `VaswaniForMaskedLM`              | `BertForMaskedLM`                                                 |
| `clm`     | `VaswaniForCausalLM`              | `GPT2LMHeadModel`                                                 |

What is measured, per size (`small`, `base`) and pair, in ONE process with A and B interleaved round by round (the
order flips every round, so drift of a shared or thermally throttled machine hits both alike):

- `train`: forward + backward + `torch.optim.AdamW` step in train mode, over a fixed pool of batches (the same
  tensors for A and B), in tokens per second. Tokens are the non-padding tokens that carry the loss: seq2seq counts
  label tokens (target side), MLM and CLM count input tokens. Our label smoothing is 0 so both compute plain
  cross-entropy. The first pass over the pool is warm-up and is excluded.
- `train MFU`: achieved training FLOP/s over the machine's measured fp32 matmul peak (square `torch.mm`, the best of
  measurements at the start and the end of the run). The FLOPs per step are counted, not estimated:
  `torch.utils.flop_counter.FlopCounterMode` over one warm-up pass, the same counter for both models (matmuls and
  attention, forward and backward, padding included since it is computed; elementwise ops and the optimizer are not
  counted). Each model is credited the FLOPs it actually runs, so MFU says how well a model uses the machine, not
  which model is faster: one that does extra work (BERT's transform head) shows a higher MFU, one that skips work
  (logits of unlabelled positions) a lower one. MFU is therefore shown but not ranked; the tok/s rows are the
  comparison.
- `greedy bN`: `generate` with the KV cache, `do_sample=False`, exactly `--new-tokens` new tokens forced
  (`min_new_tokens == max_new_tokens`), batch N; generated tokens (batch x new tokens) per second. Seq2seq and CLM.
- `beam4 b1`: the same with 4 beams at batch 1, counted as 1 x new tokens.
- `train peak memory`: a fresh process per model (forked from a server that has only imported the libraries)
  builds it, its optimizer and the same batches, then runs a training step on the smallest batch (allocating the
  AdamW moments) and one pass over the pool. Reported is the peak during those steps above the memory held before
  them (weights and batches): gradients, AdamW moments, activations and temporaries. On CUDA that is
  `torch.cuda.max_memory_allocated`; on CPU the peak resident set, read as VmHWM after resetting it through
  /proc/self/clear_refs (falling back to `ru_maxrss`), so it includes what the C allocator keeps, as a user would
  see it. A fresh process per model keeps one model's freed memory from hiding in the other's numbers.

Inputs: fp32, random token ids (the weights are random too; generation is forced to a fixed length, so the work does
not depend on what is generated). Sentence lengths follow real translation data rather than a fixed length, since
padding is part of the cost: a fixed-seed log-normal with median 30 tokens and sigma 0.55 (about 95% of sentences
between 10 and 90 tokens, chosen to resemble BPE-tokenised WMT sentences, not fitted to a corpus), clipped to
[4, 100]; a target is its source's length times exp(N(0, 0.2)). Batches are padded to their longest sentence: right
padding for sources, MLM and CLM training (labels -100 at padding), left padding for CLM generation prompts.

The architectures are not identical, and the script prints where they differ (`DIFFERENCES`). Everything that can
be set equal is set equal; nothing is removed from the references.

Usage (from the repository root):
    python benchmarks/benchmark.py --quick                         # smoke run, well under a minute
    python benchmarks/benchmark.py --config small --rounds 5 --json small.json
    python benchmarks/benchmark.py --config base --pairs seq2seq --measure train,memory
"""

import argparse
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    MarianConfig,
    MarianMTModel,
)

from vaswani import VaswaniConfig, VaswaniForCausalLM, VaswaniForConditionalGeneration, VaswaniForMaskedLM


PAD, BOS, EOS, MASK = 0, 1, 2, 4
FIRST_WORD_ID = 5  # ids below are special tokens
PAIRS = ("seq2seq", "mlm", "clm")
WHICH = ("ours", "reference")  # A and B
MEASUREMENTS = ("train", "greedy", "beam", "memory")
REFERENCE_NAMES = {"seq2seq": "MarianMTModel", "mlm": "BertForMaskedLM", "clm": "GPT2LMHeadModel"}
OUR_NAMES = {"seq2seq": "VaswaniForConditionalGeneration", "mlm": "VaswaniForMaskedLM", "clm": "VaswaniForCausalLM"}
DIFFERENCES = {  # what cannot be set equal; `detected_notes` adds what is read off the built models
    "seq2seq": "The same layers (post-LN, sinusoids, scaled shared embeddings). Marian adds a (frozen, zero) "
    "`final_logits_bias` to every logit, which costs one extra logits-sized tensor per step; it projects "
    "queries, keys and values with separate matrices where ours fuses them (same FLOPs, fewer and larger "
    "matmuls); both look sinusoids up in a table (Marian's has sin and cos halves, ours interleaves them "
    "as the paper writes), and it counts positions 0..T-1 where ours count real tokens from the attention "
    "mask. Ours skips the feed-forward work on padding (and, in training, on the decoder positions after "
    "the last label); Marian computes every position.",
    "mlm": "Ours skips the feed-forward work on padding; BERT computes every position. BERT adds token-type "
    "embeddings, an embedding LayerNorm, an MLM transform head (dense d x d + act + LayerNorm) and a vocabulary bias, with learned positions and unscaled embeddings, and projects "
    "queries, keys and values with separate matrices. BertForMaskedLM builds no pooler. Its FLOPs per "
    "token are higher by the transform head.",
    "clm": "GPT-2 is pre-LN (plus a final LayerNorm) with learned positions and unscaled embeddings, and uses "
    "Conv1D (addmm) projections, fused for queries, keys and values as ours are; ours is post-LN with "
    "sinusoids. The layers' matmul work per token is the same, but ours skips the feed-forward work on "
    "padding.",
}


# ------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Size:
    """A model size, shared by both models of a pair (layers: per stack; the seq2seq model has two stacks)."""

    name: str
    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    vocab_size: int


SIZES = {
    "small": Size("small", d_model=256, layers=4, heads=4, ffn_dim=1024, vocab_size=8000),
    "base": Size("base", d_model=512, layers=6, heads=8, ffn_dim=2048, vocab_size=32000),  # Table 3, base
    "quick": Size("quick", d_model=64, layers=2, heads=2, ffn_dim=128, vocab_size=1000),
}


@dataclass(frozen=True)
class Workload:
    """How much work one round does; the same for both models of a pair."""

    batch_size: int = 32  # sentences per training batch
    train_batches: int = 4  # training steps per round (a fixed pool, the same every round)
    new_tokens: int = 64  # generated per sequence, forced
    greedy_batch_sizes: tuple[int, ...] = (1, 8)
    num_beams: int = 4
    matmul_size: int = 2048
    seed: int = 0


QUICK_WORKLOAD = Workload(batch_size=8, train_batches=2, new_tokens=8, greedy_batch_sizes=(1, 4), matmul_size=512)


# ------------------------------------------------------------------------------------------------- models


def our_config(size: Size) -> VaswaniConfig:
    return VaswaniConfig(
        vocab_size=size.vocab_size,
        d_model=size.d_model,
        encoder_layers=size.layers,
        decoder_layers=size.layers,
        encoder_attention_heads=size.heads,
        decoder_attention_heads=size.heads,
        encoder_ffn_dim=size.ffn_dim,
        decoder_ffn_dim=size.ffn_dim,
        dropout=0.1,
        label_smoothing=0.0,  # the references compute plain cross-entropy
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        mask_token_id=MASK,
    )


def marian_config(size: Size) -> MarianConfig:
    """Marian configured as the paper's model: post-LN is all Marian has; sinusoids are built in."""
    return MarianConfig(
        vocab_size=size.vocab_size,
        d_model=size.d_model,
        encoder_layers=size.layers,
        decoder_layers=size.layers,
        encoder_attention_heads=size.heads,
        decoder_attention_heads=size.heads,
        encoder_ffn_dim=size.ffn_dim,
        decoder_ffn_dim=size.ffn_dim,
        activation_function="relu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        forced_eos_token_id=None,  # Marian's default would add a logits processor ours does not run
    )


def bert_config(size: Size) -> BertConfig:
    return BertConfig(
        vocab_size=size.vocab_size,
        hidden_size=size.d_model,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        intermediate_size=size.ffn_dim,
        hidden_act="relu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,  # ours has attention_dropout 0
        pad_token_id=PAD,
        tie_word_embeddings=True,
    )


def gpt2_config(size: Size) -> GPT2Config:
    return GPT2Config(
        vocab_size=size.vocab_size,
        n_embd=size.d_model,
        n_layer=size.layers,
        n_head=size.heads,
        n_inner=size.ffn_dim,
        activation_function="relu",
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.0,  # ours has attention_dropout 0
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
    )


MODELS = {
    "ours": {
        "seq2seq": (VaswaniForConditionalGeneration, our_config),
        "mlm": (VaswaniForMaskedLM, our_config),
        "clm": (VaswaniForCausalLM, our_config),
    },
    "reference": {
        "seq2seq": (MarianMTModel, marian_config),
        "mlm": (BertForMaskedLM, bert_config),
        "clm": (GPT2LMHeadModel, gpt2_config),
    },
}


def build_model(pair: str, which: str, size: Size, attn_implementation: str, seed: int) -> torch.nn.Module:
    """`which` is "ours" or "reference"; the seed makes every build of a model identical, in any process."""
    model_class, make_config = MODELS[which][pair]
    config = make_config(size)
    config._attn_implementation = attn_implementation  # the same kernel for both
    torch.manual_seed(seed)
    model = model_class(config)
    if model.config._attn_implementation != attn_implementation:
        raise RuntimeError(f"{model_class.__name__} runs {model.config._attn_implementation} attention.")
    check_tied(model)
    return model


def check_tied(model: torch.nn.Module) -> None:
    """Both models of a pair must share their input and output embedding, or parameter counts and work differ."""
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError(f"{type(model).__name__} does not tie its output projection to its embedding.")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable); shared tensors are counted once."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters), sum(p.numel() for p in parameters if p.requires_grad)


def generation_config(pair: str, new_tokens: int, num_beams: int) -> GenerationConfig:
    """One config for both models, also installed as their default, so no model-specific defaults leak in."""
    return GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        num_beams=num_beams,
        use_cache=True,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS if pair == "seq2seq" else None,
    )


# ------------------------------------------------------------------------------------------------- data


def sentence_lengths(rng: random.Random, count: int) -> list[int]:
    """Log-normal sentence lengths, median 30 tokens, sigma 0.55, clipped to [4, 100] (see the module docstring)."""
    return [min(100, max(4, round(rng.lognormvariate(math.log(30), 0.55)))) for _ in range(count)]


def target_lengths(rng: random.Random, source_lengths: list[int]) -> list[int]:
    """A translation is about as long as its source: length times exp(N(0, 0.2)), clipped to [4, 100]."""
    return [min(100, max(4, round(length * math.exp(rng.gauss(0.0, 0.2))))) for length in source_lengths]


def random_sentences(generator: torch.Generator, lengths: list[int], vocab_size: int) -> list[torch.Tensor]:
    """Word ids, each sentence ending with EOS."""
    sentences = []
    for length in lengths:
        words = torch.randint(FIRST_WORD_ID, vocab_size, (length - 1,), generator=generator)
        sentences.append(torch.cat([words, torch.tensor([EOS])]))
    return sentences


def pad(sentences: list[torch.Tensor], value: int, side: str = "right") -> torch.Tensor:
    longest = max(len(sentence) for sentence in sentences)
    padded = torch.full((len(sentences), longest), value, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        if side == "right":
            padded[row, : len(sentence)] = sentence
        else:
            padded[row, longest - len(sentence) :] = sentence
    return padded


def attention_mask(sentences: list[torch.Tensor], side: str = "right") -> torch.Tensor:
    return pad([torch.ones(len(sentence), dtype=torch.long) for sentence in sentences], 0, side)


def seq2seq_batch(rng, generator, batch_size: int, vocab_size: int) -> tuple[dict, int]:
    """Right-padded sources and labels (-100 at padding); the models build decoder inputs from the labels."""
    lengths = sentence_lengths(rng, batch_size)
    sources = random_sentences(generator, lengths, vocab_size)
    targets = random_sentences(generator, target_lengths(rng, lengths), vocab_size)
    labels = pad(targets, -100)
    batch = {"input_ids": pad(sources, PAD), "attention_mask": attention_mask(sources), "labels": labels}
    return batch, int((labels != -100).sum())


def mlm_batch(rng, generator, batch_size: int, vocab_size: int) -> tuple[dict, int]:
    """15% of the real tokens (at least one per sentence) replaced by <mask> and labelled; the rest -100."""
    sentences = random_sentences(generator, sentence_lengths(rng, batch_size), vocab_size)
    input_ids, mask = pad(sentences, PAD), attention_mask(sentences)
    chosen = (torch.rand(input_ids.shape, generator=generator) < 0.15) & mask.bool()
    chosen[:, 0] = True
    labels = input_ids.masked_fill(~chosen, -100)
    batch = {"input_ids": input_ids.masked_fill(chosen, MASK), "attention_mask": mask, "labels": labels}
    return batch, int(mask.sum())


def clm_batch(rng, generator, batch_size: int, vocab_size: int) -> tuple[dict, int]:
    """Right-padded sentences, labels equal to the inputs (-100 at padding); each model shifts them itself."""
    sentences = random_sentences(generator, sentence_lengths(rng, batch_size), vocab_size)
    input_ids, mask = pad(sentences, PAD), attention_mask(sentences)
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}
    return batch, int(mask.sum())


def training_batches(pair: str, size: Size, workload: Workload) -> list[tuple[dict, int]]:
    """The pool of (batch, counted tokens) that every round runs, for both models."""
    rng, generator = random.Random(workload.seed), torch.Generator().manual_seed(workload.seed)
    make = {"seq2seq": seq2seq_batch, "mlm": mlm_batch, "clm": clm_batch}[pair]
    return [make(rng, generator, workload.batch_size, size.vocab_size) for _ in range(workload.train_batches)]


def generation_inputs(pair: str, size: Size, batch_size: int, seed: int) -> dict:
    """The first `batch_size` sentences of a fixed draw (batch 1 is the first sentence of batch 8): sources
    (right-padded) or prompts (left-padded)."""
    rng, generator = random.Random(seed + 1), torch.Generator().manual_seed(seed + 1)
    sentences = random_sentences(generator, sentence_lengths(rng, batch_size), size.vocab_size)
    side = "left" if pair == "clm" else "right"
    return {"input_ids": pad(sentences, PAD, side), "attention_mask": attention_mask(sentences, side)}


def to_device(batch: dict, device: torch.device) -> dict:
    return {name: tensor.to(device) for name, tensor in batch.items()}


# ------------------------------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's counter knows the CUDA sdpa kernels but not the CPU one, which would leave attention uncounted.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_flash_attention_backward_flops,
}


def new_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    optimizer.step()


def time_training(model, optimizer, batches: list[dict], device: torch.device) -> float:
    """Seconds for one pass over the pool."""
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, batch)
    synchronize(device)
    return time.perf_counter() - start


def count_training_flops(model, optimizer, batches: list[dict]) -> int:
    """FLOPs of one pass over the pool, counted while running it (this pass doubles as the warm-up)."""
    model.train()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        for batch in batches:
            train_step(model, optimizer, batch)
    return counter.get_total_flops()


def time_generation(model, inputs: dict, config: GenerationConfig, device: torch.device) -> float:
    model.eval()
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, generation_config=config)
    synchronize(device)
    elapsed = time.perf_counter() - start
    new_tokens = output.shape[1] - (0 if model.config.is_encoder_decoder else inputs["input_ids"].shape[1])
    expected = config.max_new_tokens + (1 if model.config.is_encoder_decoder else 0)  # + decoder start token
    if new_tokens != expected:
        raise RuntimeError(f"{type(model).__name__} generated {new_tokens} tokens, expected {expected}.")
    return elapsed


def matmul_peak(device: torch.device, size: int, trials: int = 3, repeats: int = 5) -> float:
    """The fp32 FLOP/s of square matmuls, best of `trials` runs of `repeats` back to back: the denominator of MFU."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(trials):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best


# ------------------------------------------------------------------------------------------------- memory


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def start_peak_tracking(device: torch.device) -> tuple[int, str]:
    """Memory held now, in bytes, and the method; later peaks are read relative to it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device), "cuda max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM (the peak resident set) to the current resident set
        return resident_kib("VmRSS") * 1024, "peak RSS (VmHWM reset)"
    except OSError:  # not Linux, or not allowed: a high-water mark that cannot be reset
        return max_rss_bytes(), "peak RSS (ru_maxrss)"


def peak_bytes(device: torch.device, method: str) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    if method == "peak RSS (VmHWM reset)":
        return resident_kib("VmHWM") * 1024
    return max_rss_bytes()


def max_rss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def training_peak(job: dict) -> dict:
    """One model, its optimizer and the pool, in a process of its own: the training peak above what it holds."""
    device = torch.device(job["device"])
    torch.set_num_threads(job["threads"])
    size, workload = job["size"], job["workload"]
    model = build_model(job["pair"], job["which"], size, job["attn"], workload.seed).to(device)
    model.train()
    optimizer = new_optimizer(model)
    pool = [to_device(batch, device) for batch, _ in training_batches(job["pair"], size, workload)]
    smallest = min(pool, key=lambda batch: batch["input_ids"].numel())
    baseline, method = start_peak_tracking(device)
    for batch in [smallest, *pool]:  # the first step allocates the AdamW moments; the pass then sees steady state
        train_step(model, optimizer, batch)
    synchronize(device)
    return {"peak_bytes": peak_bytes(device, method) - baseline, "method": method}


def memory_worker(job: dict, connection) -> None:
    try:
        connection.send(training_peak(job))
    except BaseException:
        connection.send({"error": traceback.format_exc()})


def fresh_process_context():
    """Fresh processes forked from a server that has imported the libraries but run nothing (so no memory of
    another model and no OpenMP state is inherited), which saves the seconds of importing them per process."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The modules themselves: preloading "__main__" is silently skipped by some Python versions (3.11).
    model_classes = [model_class for models in MODELS.values() for model_class, _ in models.values()]
    context.set_forkserver_preload(sorted({"transformers.generation.utils", *(c.__module__ for c in model_classes)}))
    return context


def measure_memory(pair: str, size: Size, workload: Workload, args, which: str) -> dict:
    """The training peak of one model, measured in a fresh process."""
    job = {
        "pair": pair, "which": which, "size": size, "workload": workload,
        "device": args.device, "threads": args.threads, "attn": args.attn,
    }  # fmt: skip
    context = fresh_process_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=memory_worker, args=(job, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:  # it died without answering, killed for memory, say
        result = None
    process.join()
    if result is None:
        result = {"error": f"the process exited with code {process.exitcode} without a result (out of memory?)"}
    if "error" in result:
        raise RuntimeError(f"Measuring the memory of {which} {pair} failed:\n{result['error']}")
    return result


# ------------------------------------------------------------------------------------------------- rounds


@dataclass
class Series:
    """Per-round values of one measurement, in `unit`; higher is better unless `lower_is_better`."""

    config: str
    pair: str
    measurement: str
    unit: str
    ours: list[float]
    reference: list[float]
    lower_is_better: bool = False
    ranked: bool = True  # False: both values are shown, but a higher one is not "better" (MFU)

    def ratios(self) -> list[float]:
        """Per round, > 1 when ours is better: ours/reference for throughput, reference/ours for memory."""
        pairs = zip(self.ours, self.reference, strict=True)
        return [r / o if self.lower_is_better else o / r for o, r in pairs]


@dataclass
class Task:
    """One timed call per model and round: a training pass over the pool, or one `generate`."""

    name: str
    work: int  # counted tokens per call
    inputs: dict | None = None  # generation inputs; None for training
    generation: GenerationConfig | None = None

    def run(self, model, optimizer, pool: list[dict], device: torch.device) -> float:
        if self.inputs is None:
            return time_training(model, optimizer, pool, device)
        return time_generation(model, self.inputs, self.generation, device)


def round_tasks(pair: str, size: Size, workload: Workload, measures, tokens_per_pass: int, device) -> list[Task]:
    tasks = [Task("train", tokens_per_pass)] if "train" in measures else []
    if pair == "mlm":
        return tasks  # nothing to generate
    if "greedy" in measures:
        for batch_size in workload.greedy_batch_sizes:
            inputs = to_device(generation_inputs(pair, size, batch_size, workload.seed), device)
            config = generation_config(pair, workload.new_tokens, num_beams=1)
            tasks.append(Task(f"greedy b{batch_size}", batch_size * workload.new_tokens, inputs, config))
    if "beam" in measures:
        inputs = to_device(generation_inputs(pair, size, 1, workload.seed), device)
        config = generation_config(pair, workload.new_tokens, num_beams=workload.num_beams)
        tasks.append(Task(f"beam{workload.num_beams} b1", workload.new_tokens, inputs, config))
    return tasks


def benchmark_pair(pair: str, size: Size, workload: Workload, args) -> tuple[list[Series], dict]:
    """Time both models of a pair round by round, A and B alternating first; then their memory.

    The MFU rows are made at the end (`mfu_series`), against the best matmul peak seen in the whole run.
    """
    device = torch.device(args.device)
    models = {which: build_model(pair, which, size, args.attn, workload.seed).to(device) for which in WHICH}
    for model in models.values():
        model.generation_config = generation_config(pair, workload.new_tokens, num_beams=1)
    optimizers = {which: new_optimizer(model) for which, model in models.items()}
    pool_with_tokens = training_batches(pair, size, workload)
    pool = [to_device(batch, device) for batch, _ in pool_with_tokens]
    info = model_info(pair, size, models, pool_with_tokens)
    info["skips_training_logits"] = {which: skips_training_logits(model, pool[0]) for which, model in models.items()}
    tasks = round_tasks(pair, size, workload, args.measure, info["tokens_per_pass"], device)

    for which in WHICH:  # warm-up, excluded: the FLOP-counted pass and one call of each task
        if "train" in args.measure:
            flops = count_training_flops(models[which], optimizers[which], pool)
            info.setdefault("train_flops_per_pass", {})[which] = flops
        for task in tasks:
            task.run(models[which], optimizers[which], pool, device)
    seconds = {task.name: {which: [] for which in WHICH} for task in tasks}
    for round_index in range(args.rounds if tasks else 0):
        order = ("ours", "reference") if round_index % 2 == 0 else ("reference", "ours")
        for task in tasks:
            for which in order:
                seconds[task.name][which].append(task.run(models[which], optimizers[which], pool, device))
        log_round(f"[{size.name} {pair}] round {round_index + 1}/{args.rounds}", order, tasks, seconds)
    del models, optimizers, pool

    series = [throughput_series(size, pair, task, seconds[task.name]) for task in tasks]
    if "train" in seconds:
        info["train_seconds"] = seconds["train"]
    if "memory" in args.measure:
        series.append(memory_series(size, pair, workload, args, info))
    return series, info


def has_attention_biases(model: torch.nn.Module) -> bool:
    """Whether the attention projections (queries, keys, values, output) carry biases."""
    for name, module in model.named_modules():
        is_attention = "attn" in name or "attention" in name
        weight = getattr(module, "weight", None)
        if is_attention and isinstance(weight, torch.Tensor) and weight.dim() == 2 and module.bias is not None:
            return True
    return False


def skips_training_logits(model, batch: dict) -> bool:
    """Whether a training forward with labels returns no logits (it scores only the labelled positions)."""
    model.train()
    with torch.no_grad():
        return model(**batch).logits is None


def throughput_series(size: Size, pair: str, task: Task, seconds: dict) -> Series:
    ours, reference = ([task.work / s for s in seconds[which]] for which in WHICH)
    return Series(size.name, pair, task.name, "tok/s", ours, reference)


def mfu_series(info: dict, peak_flops: float) -> Series:
    flops, seconds = info["train_flops_per_pass"], info["train_seconds"]
    ours, reference = ([100 * flops[which] / s / peak_flops for s in seconds[which]] for which in WHICH)
    return Series(info["config"], info["pair"], "train MFU", "%", ours, reference, ranked=False)


def memory_series(size: Size, pair: str, workload: Workload, args, info: dict) -> Series:
    runs = {"ours": [], "reference": []}
    for repeat in range(args.memory_repeats):
        order = ("ours", "reference") if repeat % 2 == 0 else ("reference", "ours")
        for which in order:
            result = measure_memory(pair, size, workload, args, which)
            runs[which].append(result["peak_bytes"] / 2**20)
            info["memory_method"] = result["method"]
        print(
            f"[{size.name} {pair}] memory {repeat + 1}/{args.memory_repeats}: ours {runs['ours'][-1]:,.1f} MiB, "
            f"reference {runs['reference'][-1]:,.1f} MiB",
            file=sys.stderr,
            flush=True,
        )
    return Series(size.name, pair, "train peak memory", "MiB", runs["ours"], runs["reference"], lower_is_better=True)


def model_info(pair: str, size: Size, models: dict, pool_with_tokens) -> dict:
    info = {"config": size.name, "pair": pair, "size": asdict(size)}
    for which, model in models.items():
        total, trainable = count_parameters(model)
        info[which] = {
            "class": type(model).__name__,
            "parameters": total,
            "trainable": trainable,
            "attention_biases": has_attention_biases(model),
        }
    info["batch_shapes"] = [list(batch["input_ids"].shape) for batch, _ in pool_with_tokens]
    info["tokens_per_pass"] = sum(tokens for _, tokens in pool_with_tokens)
    return info


def log_round(prefix: str, order: tuple[str, str], tasks: list[Task], seconds: dict) -> None:
    """One progress line to stderr: this round's tokens/s, ours/reference, per task."""
    parts = []
    for task in tasks:
        ours, reference = (task.work / seconds[task.name][which][-1] for which in WHICH)
        parts.append(f"{task.name} {ours:,.0f}/{reference:,.0f}")
    first = "ours" if order[0] == "ours" else "reference"
    print(f"{prefix} ({first} first), tok/s ours/reference: " + "; ".join(parts), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- report


def median_and_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def format_value(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def results_table(all_series: list[Series]) -> str:
    lines = [
        "| config | pair | measurement | ours | reference | ratio (>1: ours better) | per-round ratio min-max |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for series in all_series:
        ratio, low, high = median_and_range(series.ratios())
        kind = "ref/ours" if series.lower_is_better else "ours/ref"
        ratio_text, range_text = (f"{ratio:.3f} ({kind})", f"{low:.3f}-{high:.3f}") if series.ranked else ("-", "-")
        ours, reference = (format_value(statistics.median(v), series.unit) for v in (series.ours, series.reference))
        lines.append(
            f"| {series.config} | {series.pair} | {series.measurement} ({series.unit}) | {ours} | {reference} | "
            f"{ratio_text} | {range_text} |"
        )
    return "\n".join(lines)


def models_table(infos: list[dict]) -> str:
    lines = [
        "| config | pair | ours | params (trainable) | reference | params (trainable) | train GFLOP/pass ours / ref |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for info in infos:
        flops = info.get("train_flops_per_pass")
        flop_text = f"{flops['ours'] / 1e9:.1f} / {flops['reference'] / 1e9:.1f}" if flops else "-"
        ours, reference = (
            f"{info[which]['class']} | {info[which]['parameters']:,} ({info[which]['trainable']:,})" for which in WHICH
        )
        lines.append(f"| {info['config']} | {info['pair']} | {ours} | {reference} | {flop_text} |")
    return "\n".join(lines)


def machine_description(device: torch.device, threads: int, peak_flops: float, attn: str) -> str:
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = cpu_model_name()
    return (
        f"{hardware}, {threads} threads, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}, attention {attn}, fp32 (matmul precision "
        f"{torch.get_float32_matmul_precision()}), measured fp32 matmul peak {peak_flops / 1e9:,.0f} GFLOP/s"
    )


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detected_notes(infos: list[dict]) -> list[str]:
    """Differences read off the built models, so they stay true as either implementation changes (once per pair)."""
    notes = []
    for info in infos:
        pair_notes = []
        biases = {which: info[which]["attention_biases"] for which in WHICH}
        if biases["ours"] != biases["reference"]:
            without, other = ("ours", "reference") if not biases["ours"] else ("reference", "ours")
            pair_notes.append(
                f"{info[without]['class']} has no biases in its attention projections (the paper's W^Q, W^K, W^V, "
                f"W^O have none); {info[other]['class']} has."
            )
        skips = info["skips_training_logits"]
        if skips["ours"] != skips["reference"]:
            skipping, other = ("ours", "reference") if skips["ours"] else ("reference", "ours")
            pair_notes.append(
                f"In training {info[skipping]['class']} projects only the labelled positions to the vocabulary and "
                f"returns no logits; {info[other]['class']} projects every position. That is less work and memory "
                "for the same loss, and shows in the GFLOP/pass column."
            )
        notes += [f"- `{info['pair']}`: {note}" for note in pair_notes]
    return list(dict.fromkeys(notes))


def report(all_series, infos, machine: str, args, workload: Workload) -> str:
    pairs = sorted({info["pair"] for info in infos}, key=PAIRS.index)
    memory_method = next((info["memory_method"] for info in infos if "memory_method" in info), None)
    memory_text = ""
    if memory_method:
        memory_text = f"; memory by {memory_method}, {args.memory_repeats} fresh process(es) per model"
    notes = [f"- `{pair}` ({OUR_NAMES[pair]} vs {REFERENCE_NAMES[pair]}): {DIFFERENCES[pair]}" for pair in pairs]
    notes += detected_notes(infos)
    return "\n".join(
        [
            f"Machine: {machine}.",
            f"Rounds: {args.rounds} (A/B order alternating); training batch {workload.batch_size} sentences x "
            f"{workload.train_batches} steps per round; {workload.new_tokens} new tokens per generation{memory_text}.",
            "",
            "Ratios are medians of per-round ratios, > 1 when ours is better: ours/reference for tokens per second, "
            "reference/ours for memory. MFU credits each model the FLOPs it runs (GFLOP/pass below), so it is not "
            "ranked.",
            "",
            results_table(all_series),
            "",
            models_table(infos),
            "",
            "Differences between the implementations:",
            *notes,
            "",
            f"Reproduce: `{reproduce_command(args)}`",
        ]
    )


def reproduce_command(args) -> str:
    """The command with every machine-dependent default written out."""
    flags = ["--quick"] if args.quick else ["--config", args.config]
    flags += ["--rounds", args.rounds, "--pairs", ",".join(args.pairs), "--measure", ",".join(args.measure)]
    if not args.quick:
        flags += ["--batch-size", args.batch_size, "--train-steps", args.train_steps, "--new-tokens", args.new_tokens]
    flags += ["--threads", args.threads, "--device", args.device, "--attn", args.attn]
    flags += ["--memory-repeats", args.memory_repeats, "--seed", args.seed]
    return "python benchmarks/benchmark.py " + " ".join(shlex.quote(str(flag)) for flag in flags)


# ------------------------------------------------------------------------------------------------- main


def comma_list(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        unknown = [value for value in values if value not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return values

    return parse


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=("small", "base", "both"), default="both", help="model sizes")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per pair (after one warm-up)")
    parser.add_argument("--pairs", type=comma_list(PAIRS), default=list(PAIRS), help="from " + ",".join(PAIRS))
    parser.add_argument(
        "--measure", type=comma_list(MEASUREMENTS), default=list(MEASUREMENTS), help="from " + ",".join(MEASUREMENTS)
    )
    parser.add_argument("--threads", type=int, default=available_cores(), help="torch threads (default: all cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="attention implementation of both")
    parser.add_argument("--batch-size", type=int, default=Workload.batch_size, help="sentences per training batch")
    parser.add_argument("--train-steps", type=int, default=Workload.train_batches, help="training steps per round")
    parser.add_argument("--new-tokens", type=int, default=Workload.new_tokens, help="generated tokens, forced")
    parser.add_argument("--memory-repeats", type=int, help="fresh processes per model for memory (3; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the results, per-round values included, as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and workload: checks that the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
    if args.memory_repeats is None:
        args.memory_repeats = 1 if args.quick else 3
    return args


def workload_from(args) -> Workload:
    if args.quick:
        return replace(QUICK_WORKLOAD, seed=args.seed)
    return Workload(
        batch_size=args.batch_size, train_batches=args.train_steps, new_tokens=args.new_tokens, seed=args.seed
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device, workload = torch.device(args.device), workload_from(args)
    names = ("small", "base") if args.config == "both" else (args.config,)
    sizes = [SIZES["quick"]] if args.quick else [SIZES[name] for name in names]
    peak_flops = matmul_peak(device, workload.matmul_size)
    print(machine_description(device, args.threads, peak_flops, args.attn), file=sys.stderr, flush=True)

    all_series, infos = [], []
    for size in sizes:
        for pair in args.pairs:
            series, info = benchmark_pair(pair, size, workload, args)
            all_series.append(series)
            infos.append(info)
    # A busy moment can only lower a measured peak: keep the best of the start and the end of the run.
    peak_flops = max(peak_flops, matmul_peak(device, workload.matmul_size))
    for series, info in zip(all_series, infos, strict=True):
        if "train_seconds" in info:
            series.insert(1, mfu_series(info, peak_flops))  # after the train row
    all_series = [row for series in all_series for row in series]
    machine = machine_description(device, args.threads, peak_flops, args.attn)
    print(report(all_series, infos, machine, args, workload))
    if args.json:
        write_json(args, all_series, infos, machine, peak_flops, workload)


def write_json(args, all_series, infos, machine: str, peak_flops: float, workload: Workload) -> None:
    rows = []
    for series in all_series:
        row = asdict(series)
        row["ratios"] = series.ratios()
        row["median_ours"] = statistics.median(series.ours)
        row["median_reference"] = statistics.median(series.reference)
        row["median_ratio"] = statistics.median(row["ratios"])
        rows.append(row)
    results = {
        "command": reproduce_command(args),
        "machine": machine,
        "matmul_peak_flops": peak_flops,
        "workload": asdict(workload),
        "models": infos,
        "rows": rows,
    }
    with open(args.json, "w") as out:
        json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
