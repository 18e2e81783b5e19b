"""Fast decoding in PyTorch: a static cache per batch, the decoder step compiled once per model, a lean loop.

    generator = CompiledGenerator(model)                       # VaswaniForConditionalGeneration or VaswaniForCausalLM
    sequences = generator.generate(input_ids, attention_mask, max_new_tokens=64, num_beams=4, length_penalty=0.6)

`sequences` are the tokens `model.generate()` returns with the same arguments in float32 (greedy, or beam search with
transformers' own beam bookkeeping), up to near-ties of floating-point sums: seq2seq outputs start with the decoder
start token, causal-LM outputs with the prompt; finished rows are padded as generate() pads them.

Why not `model.generate(cache_implementation="static")` with a `CompileConfig`: measured on a 2-core CPU, it is no
faster than the dynamic cache (about 4.8 against 5.5 ms a token at d_model 256), since each step still runs
generate()'s per-step Python (logits processors, stopping criteria, kwargs and cache bookkeeping, mask building,
output recording) and Dynamo's guards, and at batch 1 that overhead costs more than the model's arithmetic. Here one
compiled function does a whole decoding step over a static cache (one tensor per layer, written in place), and a loop
does only what greedy or beam search needs. The encoder (and a causal LM's prompt) runs once per batch through the
model's own forward; the step reuses the model's modules (embeddings, projections, layer norms, residual blocks,
feed-forward), so only the cache plumbing and attention over it are written here.

How the step is compiled:
- CPU: ahead of time by AOTInductor (`torch.export` with symbolic batch, cache and source lengths, then
  `aoti_compile_and_package`), so ONE compilation serves every batch shape, and a call runs the C++ kernels without
  Dynamo's guards or autograd's runtime wrappers (together about 0.3 ms of a 0.8 ms step at batch 1). Inductor's
  CPU inference options: `freezing` (weights become constants, prepacked) and `max_autotune` with its C++ GEMM
  templates (AVX-512/AMX micro-kernels picked by measurement: at batch 8 they take the int8 step from 2.1 to 1.2 ms).
  The package is cached on disk beside Inductor's own compiled code (`TORCHINDUCTOR_CACHE_DIR`), keyed by the
  weights, the config, the code, the thread count and the CPU, so a later process loads it in a second instead of
  compiling for half a minute; loading runs its shared library, so only a package that this user owns, in a folder
  nobody else may write, is loaded.
- CUDA: `torch.compile(mode="reduce-overhead")`, CUDA graphs replayed over a static cache per shape bucket (batch
  rounded up to a power of two, the cache to 64 positions, the source to a power of two), one graph per bucket.

`quantization="int8"`: the decoder's linear layers and the output projection hold int8 weights with one scale per
output feature, multiplied with bfloat16 activations (see `Int8WeightLinear`); the encoder runs once per batch and
stays in float.
"""

import copy
import hashlib
import inspect
import itertools
import json
import math
import os
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
from transformers import GenerationMixin
from transformers.utils import logging

from vaswani.configuration.errors import InputError


logger = logging.get_logger(__name__)
QUANTIZATIONS = (None, "int8")
# Inductor options for a CPU inference step: frozen (constant, prepacked) weights, GEMM kernels chosen by measurement.
CPU_INDUCTOR_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
MIN_SOURCE_BUCKET = 16
CACHE_BUCKET = 64  # CUDA graphs: cache lengths are rounded up to a multiple of this
CACHE_GROWTH = 32  # otherwise: the cache grows by this many positions when full
RECOMPILE_LIMIT = 64  # CUDA: one graph per shape bucket; Dynamo's default (8) would fall back to eager after 8
# Example sizes the CPU step is exported with: all symbolic afterwards, chosen unlike any model dimension (equal
# example sizes would be taken for one symbol) and above 1 (export specializes sizes 0 and 1).
EXAMPLE_ROWS, EXAMPLE_CACHE_LENGTH, EXAMPLE_SOURCE_LENGTH = 3, 67, 19


def bucket_size(size: int, minimum: int = 1) -> int:
    """The power of two at or above `size` (and `minimum`): the padded size a compiled shape is made for."""
    return max(minimum, 1 << max(0, size - 1).bit_length())


class DecoderStep(nn.Module):
    """One decoding step of the decoder over a static cache: logits of the next token of each row.

    Every tensor that changes per batch is an argument (see `DecodingState`): the cache (one keys and one values
    tensor per layer, written in place at `cache_position`), which cache positions hold real tokens (a causal LM's
    left-padded prompt leaves gaps), how many padding positions precede each row's tokens (positions count real
    tokens only, as in the model), and for seq2seq the cross-attention keys and values of the encoder output.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.decoder, self.lm_head = model.model.decoder, model.lm_head
        self.is_encoder_decoder = model.config.is_encoder_decoder

    def forward(
        self, input_ids, cache_position, real_slots, padding, caches, cross_keys=None, cross_values=None,
        source_mask=None,
    ) -> torch.Tensor:  # fmt: skip
        """Logits (rows, vocab) after `input_ids` (rows, 1), whose keys and values go to `cache_position` (1,)."""
        _, hidden_states = self.decoder.embed(input_ids, None, cache_position - padding)  # (rows, 1, d_model)
        slots = torch.arange(real_slots.shape[1], device=real_slots.device)
        self_mask = ((slots <= cache_position) & real_slots)[:, None, None, :]  # (rows, 1, 1, cache length)
        for index, layer in enumerate(self.decoder.layers):
            keys_values = caches[2 * index : 2 * index + 2]
            attention = partial(self.self_attention, layer.self_attn, *keys_values, cache_position, self_mask)
            hidden_states = layer.residual(layer.self_attn_layer_norm, attention, hidden_states)
            if self.is_encoder_decoder:
                keys_values = (cross_keys[index], cross_values[index])
                attention = partial(self.cross_attention, layer.cross_attn, *keys_values, source_mask)
                hidden_states = layer.residual(layer.cross_attn_layer_norm, attention, hidden_states)
            hidden_states = layer.residual(layer.feed_forward_layer_norm, layer.feed_forward, hidden_states)
        hidden_states = self.decoder.final_layer_norm(hidden_states)
        return self.lm_head(hidden_states[:, -1]).float()

    def self_attention(self, attention, keys, values, cache_position, mask, hidden_states):
        query, key, value = attention.split_heads(attention.qkv_proj(hidden_states), 3)  # (rows, heads, 1, head_dim)
        keys.index_copy_(2, cache_position, key)
        values.index_copy_(2, cache_position, value)
        return self.attend(attention, query, keys, values, mask)

    def cross_attention(self, attention, keys, values, mask, hidden_states):
        (query,) = attention.split_heads(attention.q_proj(hidden_states), 1)
        return self.attend(attention, query, keys, values, mask)

    @staticmethod
    def attend(attention, query, key, value, mask):
        # Written out rather than `F.scaled_dot_product_attention`: for one query Inductor fuses these into its own
        # kernels, where sdpa's CPU kernel is an opaque call costing more than the arithmetic (about 6% of a step).
        scores = (query @ key.transpose(2, 3)) * attention.scaling  # (rows, heads, 1, keys)
        output = scores.masked_fill(~mask, -math.inf).softmax(-1) @ value
        return attention.out_proj(output.transpose(1, 2).flatten(2))  # (rows, 1, d_model)


@dataclass
class DecodingState:
    """The per-batch tensors `DecoderStep` reads and writes, zeroed for `rows` x `max_length` cache positions."""

    caches: list[torch.Tensor]  # keys, values of layer 0, keys, values of layer 1, ...: (rows, heads, length, dim)
    real_slots: torch.Tensor  # (rows, max_length) bool
    padding: torch.Tensor  # (rows, 1)
    cross_keys: torch.Tensor | None = None  # (layers, rows, heads, source_length, head_dim)
    cross_values: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None  # (rows, 1, 1, source_length) bool

    @classmethod
    def zeros(cls, model: nn.Module, rows: int, max_length: int, source_length: int) -> "DecodingState":
        config, device, dtype = model.config, model.device, model.dtype
        heads = config.decoder_attention_heads
        layers, head_dim = config.decoder_layers, config.d_model // heads
        caches = [torch.zeros(rows, heads, max_length, head_dim, device=device, dtype=dtype) for _ in range(2 * layers)]
        real_slots = torch.ones(rows, max_length, device=device, dtype=torch.bool)
        state = cls(caches, real_slots, torch.zeros(rows, 1, device=device, dtype=torch.long))
        if config.is_encoder_decoder:
            state.cross_keys = torch.zeros(layers, rows, heads, source_length, head_dim, device=device, dtype=dtype)
            state.cross_values = torch.zeros_like(state.cross_keys)
            state.source_mask = torch.zeros(rows, 1, 1, source_length, device=device, dtype=torch.bool)
        return state

    @property
    def capacity(self) -> int:
        return self.real_slots.shape[1]

    def grow(self, length: int) -> None:
        """Room for `length` cache positions: longer caches (and real-position flags), the content copied over."""

        def longer(tensor: torch.Tensor, dim: int, fill) -> torch.Tensor:
            shape = list(tensor.shape)
            shape[dim] = length
            grown = tensor.new_full(shape, fill)
            grown.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
            return grown

        self.caches = [longer(cache, 2, 0) for cache in self.caches]
        self.real_slots = longer(self.real_slots, 1, True)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.caches, *(tensor for tensor in self.inputs() if isinstance(tensor, torch.Tensor))]

    def inputs(self) -> list:
        """The step's arguments after `input_ids` and `cache_position`, in its order."""
        crosses = [self.cross_keys, self.cross_values, self.source_mask] if self.cross_keys is not None else []
        return [self.real_slots, self.padding, self.caches, *crosses]

    def reorder(self, rows: torch.Tensor, filled: int) -> None:
        """Beam search: row i of the cache continues row `rows[i]`'s hypothesis. Only the `filled` positions written
        so far are moved: at batch 8 and 4 beams, moving whole caches cost more than the decoder step."""
        for cache in self.caches:
            written = cache[:, :, :filled]
            written.copy_(written.index_select(0, rows))


class PackagedStep:
    """`DecoderStep` compiled ahead of time by AOTInductor for every batch shape (CPU), loaded from the disk cache when
    this model was compiled before. Called with the step's arguments; compiles on the first call."""

    def __init__(self, step: DecoderStep, model: nn.Module):
        self.step, self.model = step, model
        self.runner, self.compiled_positions = None, None
        self.compilations = 0  # packages compiled by this object (not loaded): once per model, whatever the shapes

    def __call__(self, *inputs) -> torch.Tensor:
        positions = self.step.decoder.embed_positions
        if self.runner is None or position_count(positions) != self.compiled_positions:  # a sinusoid table grew
            self.runner, self.compiled_positions = self.load_or_compile(), position_count(positions)
        # `loader.boxed_run` with the flat inputs rather than the runner's `__call__`, which parses its input and
        # output specs from JSON at every call (about 30 us of a step). The package reads each input with the strides
        # it was exported with, unchecked: the states are made contiguous, the tokens (a beam search's are a strided
        # view) are made so here.
        input_ids, *others = inputs
        flat = [input_ids.contiguous(), *others[:3], *others[3], *others[4:]]
        return self.runner.loader.boxed_run(flat)[0]

    def load_or_compile(self):
        path = package_path(self.step, self.model)
        if not path.is_file():
            logger.warning(f"Compiling the decoder step for this model, once (about half a minute on a CPU): {path}")
            compile_package(self.step, self.model, path)
            self.compilations += 1
        check_trusted(path)
        return torch._inductor.aoti_load_package(str(path))


def check_trusted(path: Path) -> None:
    """Loading a package runs its shared library: refuse one that another user could have written."""
    for entry in (path, path.parent):
        status = entry.stat()
        if status.st_uid != os.getuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise InputError(
                f"{entry} is not owned by this user, or others may write it: a compiled decoder step is not loaded "
                "from there. Set TORCHINDUCTOR_CACHE_DIR to a folder only you can write."
            )


def position_count(positions: nn.Module) -> int:
    """How many positions the step can embed: a sinusoid table's length, or the learned table's."""
    return positions.table.shape[0] if hasattr(positions, "table") else positions.num_embeddings


def package_path(step: DecoderStep, model: nn.Module) -> Path:
    """Where the compiled package of `step` is cached: named by a hash of all it depends on. Every parameter and
    buffer is frozen into the package, so all are hashed; `state_dict()` would leave out a sinusoid table, which is
    not saved, and a package made before the table grew would be loaded for longer outputs."""
    digest = hashlib.sha256()
    for name, tensor in itertools.chain(step.named_parameters(), step.named_buffers()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    code = [inspect.getsource(inspect.getmodule(type(module))) for module in (step, model)]  # the step, the layers
    versions = {
        "config": model.config.to_dict(), "code": code,
        "torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "options": CPU_INDUCTOR_OPTIONS,
        "threads": torch.get_num_threads(),  # the kernels' parallel loops are generated for this many threads
    }  # fmt: skip
    digest.update(json.dumps(versions, sort_keys=True, default=str).encode())
    return Path(inductor_cache_dir()) / "vaswani" / f"decoder-step-{digest.hexdigest()[:32]}.pt2"


def compile_package(step: DecoderStep, model: nn.Module, path: Path) -> None:
    """Export `step` with symbolic rows, cache length and source length, compile it, and move the package into place
    (written under a temporary name first, so that a concurrent process never loads a partial file)."""
    with torch.inference_mode(False), torch.no_grad():  # export writes the example cache: not inference tensors
        state = DecodingState.zeros(model, EXAMPLE_ROWS, EXAMPLE_CACHE_LENGTH, EXAMPLE_SOURCE_LENGTH)
        input_ids = torch.zeros(EXAMPLE_ROWS, 1, dtype=torch.long, device=model.device)
        position = torch.zeros(1, dtype=torch.long, device=model.device)
        exported = torch.export.export(step, (input_ids, position, *state.inputs()), dynamic_shapes=symbolic(state))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.pt2")
    try:
        torch._inductor.aoti_compile_and_package(
            exported, package_path=str(temporary), inductor_configs=dict(CPU_INDUCTOR_OPTIONS)
        )  # a copy: the function adds its own entries to the dict it is given
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def symbolic(state: DecodingState) -> tuple:
    """The symbolic sizes of the step's arguments: rows, cache length and source length."""
    rows, length = torch.export.Dim("rows", max=1 << 16), torch.export.Dim("cache_length", max=1 << 20)
    source = torch.export.Dim("source_length", max=1 << 20)
    shapes = [{0: rows}, None, {0: rows, 1: length}, {0: rows}, [{0: rows, 2: length}] * len(state.caches)]
    if state.cross_keys is not None:
        shapes += [{1: rows, 3: source}, {1: rows, 3: source}, {0: rows, 3: source}]
    return tuple(shapes)


class CompiledGenerator:
    """Greedy and beam-search generation through `DecoderStep`, compiled once (see the module docstring).

    `model`: a `VaswaniForConditionalGeneration` or `VaswaniForCausalLM` (put on its device first; it is not
    modified: quantization works on a copy). `quantization`: None or "int8" (see `Int8WeightLinear`).
    `compile`: False runs the same step eagerly. Special tokens come from `model.generation_config`.
    """

    def __init__(self, model: nn.Module, quantization: str | None = None, compile: bool = True):
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
        if not hasattr(model, "lm_head") or not hasattr(model.model, "decoder"):
            raise ValueError(f"{type(model).__name__} does not generate: use a seq2seq or causal LM view.")
        self.device = model.device
        self.model = quantize(model) if quantization else model
        self.model.eval()
        self.config = model.config
        generation = model.generation_config
        eos = generation.eos_token_id
        self.eos_tokens = torch.tensor(eos if isinstance(eos, list) else [eos], device=model.device)
        self.pad_token_id = generation.pad_token_id
        # What beam search fills finished hypotheses with, as `generate()` chooses it (a pad id of 0 counts as unset).
        self.fill_token_id = self.pad_token_id or int(self.eos_tokens[0])
        self.decoder_start_token_id = generation.decoder_start_token_id
        self.early_stopping = generation.early_stopping
        self.step = DecoderStep(self.model)
        self.run_step = self.compiled_step() if compile else self.step
        self.buckets: dict[tuple[int, int, int], DecodingState] = {}  # CUDA graphs: one state per shape bucket

    def compiled_step(self):
        if self.device.type == "cpu":
            return PackagedStep(self.step, self.model)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        return torch.compile(self.step, mode="reduce-overhead", fullgraph=True, dynamic=False)

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.device.type == "cuda" and self.run_step is not self.step

    def state_for(self, rows: int, max_length: int, source_length: int, filled: int = 0) -> DecodingState:
        """A zeroed state for `max_length` cache positions, of which the first `filled` are about to be copied in.
        Without CUDA graphs it starts with room for `CACHE_GROWTH` more and grows as decoding goes (`grow`): every
        step attends over all positions of its cache, so a cache sized for the longest output up front (source length
        + 50 in `vaswani-translate`) made attention at large batches cost more than `generate()`'s. CUDA graphs
        replay on fixed addresses, so there each shape bucket keeps one full-size state, reused."""
        if not self.uses_cuda_graphs:
            return DecodingState.zeros(self.model, rows, min(max_length, filled + CACHE_GROWTH), source_length)
        key = (rows, math.ceil(max_length / CACHE_BUCKET) * CACHE_BUCKET, bucket_size(source_length, MIN_SOURCE_BUCKET))
        if key not in self.buckets:
            self.buckets[key] = DecodingState.zeros(self.model, *key)
            for tensor in self.buckets[key].tensors():
                torch._dynamo.mark_static_address(tensor)
        state = self.buckets[key]
        for tensor in state.tensors():
            tensor.zero_()
        state.real_slots.fill_(True)
        return state

    def decode_step(self, state: DecodingState, input_ids: torch.Tensor, slot: int) -> torch.Tensor:
        if self.uses_cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        if slot >= state.capacity:
            state.grow(slot + CACHE_GROWTH)
        position = torch.tensor([slot], device=input_ids.device)
        return self.run_step(input_ids, position, *state.inputs())

    @torch.inference_mode()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
        min_new_tokens: int = 0, num_beams: int = 1, length_penalty: float = 1.0,
    ) -> torch.Tensor:  # fmt: skip
        """Tokens as `model.generate(input_ids, attention_mask, max_new_tokens=..., min_new_tokens=...,
        num_beams=..., length_penalty=..., do_sample=False)` returns them."""
        if max_new_tokens < 1 or num_beams < 1:
            raise ValueError(f"max_new_tokens and num_beams must be positive, got {max_new_tokens}, {num_beams}")
        input_ids = input_ids.to(self.device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        batch = input_ids.shape[0]
        if self.uses_cuda_graphs:  # extra rows (copies of the first) fill a bucket; they are dropped from the outputs
            input_ids, attention_mask = (pad_rows(tensor, bucket_size(batch)) for tensor in (input_ids, attention_mask))
        prompt_length = 1 if self.config.is_encoder_decoder else input_ids.shape[1]
        self.model.model.decoder.embed_positions.check_length(prompt_length + max_new_tokens - 1)  # learned: a limit
        if self.config.is_encoder_decoder:
            state, prompt, logits, slot = self.start_seq2seq(input_ids, attention_mask, num_beams, max_new_tokens)
        else:
            state, prompt, logits, slot = self.start_causal(input_ids, attention_mask, num_beams, max_new_tokens)
        limits = (max_new_tokens, min_new_tokens)
        if num_beams == 1:
            return self.greedy_search(state, prompt, logits, slot, *limits, batch)
        return self.beam_search(state, prompt, logits, slot, *limits, batch, num_beams, length_penalty)

    def start_seq2seq(self, input_ids, attention_mask, num_beams: int, max_new_tokens: int):
        """Encodes the sources (the model's own encoder, once per batch) and runs the first decoding step."""
        encoder_states = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        encoder_states, attention_mask = (t.repeat_interleave(num_beams, 0) for t in (encoder_states, attention_mask))
        rows, length = attention_mask.shape
        state = self.state_for(rows, max_new_tokens, length)
        state.source_mask[:, 0, 0, :length] = attention_mask.bool()
        for index, layer in enumerate(self.model.model.decoder.layers):
            key, value = layer.cross_attn.split_heads(layer.cross_attn.kv_proj(encoder_states), 2)
            state.cross_keys[index, :, :, :length] = key  # (rows, heads, source, head_dim)
            state.cross_values[index, :, :, :length] = value
        prompt = torch.full((rows, 1), self.decoder_start_token_id, device=self.device, dtype=torch.long)
        return state, prompt, self.decode_step(state, prompt, 0), 1

    def start_causal(self, input_ids, attention_mask, num_beams: int, max_new_tokens: int):
        """Runs the prompt through the model's own forward (once per batch) and copies its cache into the state."""
        input_ids, attention_mask = (t.repeat_interleave(num_beams, 0) for t in (input_ids, attention_mask))
        rows, length = input_ids.shape
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
        state = self.state_for(rows, length + max_new_tokens, 0, filled=length)
        for index, layer in enumerate(outputs.cache.layers):
            state.caches[2 * index][:, :, :length] = layer.keys
            state.caches[2 * index + 1][:, :, :length] = layer.values
        state.real_slots.fill_(True)
        state.real_slots[:, :length] = attention_mask.bool()
        state.padding.copy_((length - attention_mask.sum(-1, keepdim=True)))
        return state, input_ids, outputs.logits[:, -1].float(), length

    def greedy_search(self, state, prompt, logits, slot: int, max_new_tokens: int, min_new_tokens: int, batch: int):
        """Greedy decoding as `generate()` does it: after EOS a row gets padding; all stop when the last of the
        `batch` real rows has ended."""
        tokens, finished = [], torch.zeros(prompt.shape[0], dtype=torch.bool, device=self.device)
        for index in range(max_new_tokens):
            if index > 0:
                logits = self.decode_step(state, tokens[-1][:, None], slot + index - 1)
            if index < min_new_tokens:
                logits[:, self.eos_tokens] = -math.inf
            next_tokens = logits.argmax(-1).masked_fill(finished, self.pad_token_id)
            tokens.append(next_tokens)
            finished |= torch.isin(next_tokens, self.eos_tokens)
            if finished[:batch].all():
                break
        return torch.cat((prompt, torch.stack(tokens, 1)), 1)[:batch]

    def initial_beams(self, prompt, num_beams: int, max_new_tokens: int):
        """The running sequences (the prompt, then room for the new tokens), scores and beam indices of a search:
        the beams start equal, so only the first one's continuations count."""
        rows, prompt_length = prompt.shape
        padded_batch = rows // num_beams
        shape = (padded_batch, num_beams, prompt_length + max_new_tokens)
        sequences = torch.full(shape, self.fill_token_id, device=self.device)
        sequences[:, :, :prompt_length] = prompt.view(padded_batch, num_beams, prompt_length)
        scores = torch.zeros(padded_batch, num_beams, device=self.device)
        scores[:, 1:] = -1e9
        indices = torch.full((padded_batch, num_beams, max_new_tokens), -1, dtype=torch.int32, device=self.device)
        return sequences, scores, indices

    def beam_search(
        self, state, prompt, logits, slot: int, max_new_tokens: int, min_new_tokens: int, batch: int,
        num_beams: int, length_penalty: float,
    ) -> torch.Tensor:  # fmt: skip
        """Beam search with transformers' own bookkeeping (`GenerationMixin`'s beam helpers, called on the model),
        so that hypotheses, scores, length penalty and early stopping are exactly `generate()`'s."""
        model, eos = self.model, self.eos_tokens
        rows, prompt_length = prompt.shape
        padded_batch, max_length = rows // num_beams, prompt_length + max_new_tokens
        beams_to_keep = max(2, 1 + len(eos)) * num_beams
        top_num_beam_mask = torch.arange(beams_to_keep, device=self.device) < num_beams
        running_sequences, running_scores, running_beam_indices = self.initial_beams(prompt, num_beams, max_new_tokens)
        sequences, beam_indices = running_sequences.clone(), running_beam_indices.clone()
        finished_scores = torch.full((padded_batch, num_beams), -1e9, device=self.device)
        is_sent_finished = torch.zeros(padded_batch, num_beams, dtype=torch.bool, device=self.device)
        can_improve = torch.ones(padded_batch, 1, dtype=torch.bool, device=self.device)
        for cur_len in range(prompt_length, max_length):
            new_tokens = cur_len - prompt_length
            if new_tokens > 0:
                state.reorder(running_beam_indices[..., new_tokens - 1].flatten(), filled=slot + new_tokens - 1)
                last_tokens = running_sequences[:, :, cur_len - 1].reshape(rows, 1)
                logits = self.decode_step(state, last_tokens, slot + new_tokens - 1)
            log_probs = F.log_softmax(logits, dim=-1)
            if new_tokens < min_new_tokens:
                log_probs[:, eos] = -math.inf
            log_probs = log_probs.view(padded_batch, num_beams, -1) + running_scores[:, :, None]
            top_scores, top_sequences, top_beam_indices = model._get_top_k_continuations(
                log_probs.view(padded_batch, -1), running_sequences, running_beam_indices, cur_len, prompt_length,
                do_sample=False, beams_to_keep=beams_to_keep, num_beams=num_beams, batch_size=padded_batch,
            )  # fmt: skip
            hits_stop = torch.isin(top_sequences[:, :, cur_len], eos) | (cur_len + 1 >= max_length)
            running_sequences, running_scores, running_beam_indices = model._get_running_beams_for_next_iteration(
                top_scores, top_sequences, top_beam_indices, hits_stop, num_beams
            )
            sequences, finished_scores, beam_indices, is_sent_finished = model._update_finished_beams(
                sequences, top_sequences, finished_scores, top_scores, beam_indices, top_beam_indices, can_improve,
                is_sent_finished, hits_stop, top_num_beam_mask, num_beams, cur_len, prompt_length, length_penalty,
                self.early_stopping,
            )  # fmt: skip
            can_improve = GenerationMixin._check_early_stop_heuristic(
                can_improve, running_scores, finished_scores, is_sent_finished, cur_len + 1, max_length,
                prompt_length, self.early_stopping, length_penalty,
            )  # fmt: skip
            unfinished = GenerationMixin._beam_search_has_unfinished_sequences(
                can_improve[:batch], is_sent_finished[:batch], hits_stop[:batch], self.early_stopping
            )
            if not unfinished:
                break
        best, best_indices = sequences[:batch, 0], beam_indices[:batch, 0]
        return best[:, : prompt_length + int((best_indices + 1).bool().sum(-1).max())]


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with copies of its first row appended up to `rows` rows."""
    extra = rows - tensor.shape[0]
    return torch.cat((tensor, tensor[:1].expand(extra, *tensor.shape[1:]))) if extra else tensor


class Int8WeightLinear(nn.Module):
    """A linear layer whose weights are int8, with one scale per output feature (symmetric, the largest weight of a
    row maps to 127), multiplied with bfloat16 activations in one kernel: `torch.ops.aten._weight_int8pack_mm`, what
    Inductor's own weight-only int8 pattern lowers to (and, autotuned, its C++ GEMM template for int8 weights).

    Called directly because torchao's configs do not reach it on this path (measured with torchao 0.18):
    `Int8DynamicActivationInt8WeightConfig` quantizes activations too, and oneDNN's int8 product is pathological for
    a single row (5.9 ms for the 8000 x 256 output projection); `Int8WeightOnlyConfig`'s weights were folded back to
    float32 constants when Inductor froze them. Batch-1 decoding is bound by reading weights, so a quarter of the
    bytes is the speed-up."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        self.weight = nn.Buffer(torch.round(weight / scales[:, None]).to(torch.int8))
        self.scales = nn.Buffer(scales.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states.reshape(-1, hidden_states.shape[-1]).to(torch.bfloat16)
        output = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales).float()
        output = output.reshape(*hidden_states.shape[:-1], -1)
        return output if self.bias is None else output + self.bias


def quantize(model: nn.Module) -> nn.Module:
    """A copy of `model` whose decoder linear layers and output projection are `Int8WeightLinear`s. The encoder runs
    once per batch and stays in float; so do the (tied) embeddings."""
    check_int8_kernel(model.device)
    model = copy.deepcopy(model)
    model.lm_head = Int8WeightLinear(model.lm_head)
    for module in list(model.model.decoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8WeightLinear(child))
    return model


def check_int8_kernel(device: torch.device) -> None:
    """A clear error where PyTorch has no int8 weight kernel for `device` (it has one on CPUs; other devices vary by
    version), before a model is copied and quantized for nothing."""
    rows, weight = torch.zeros(1, 32, dtype=torch.bfloat16, device=device), torch.zeros(8, 32, dtype=torch.int8)
    try:
        torch.ops.aten._weight_int8pack_mm(rows, weight.to(device), torch.ones(8, dtype=torch.bfloat16, device=device))
    except (NotImplementedError, RuntimeError) as error:
        message = f"int8 decoding needs PyTorch's int8 weight kernel, which fails on {device}: {error}"
        raise ValueError(message) from error
