"""Fast decoding in PyTorch: a static cache sized once, the decoder step compiled once per shape bucket, a lean loop.

    generator = CompiledGenerator(model)                       # VaswaniForConditionalGeneration or VaswaniForCausalLM
    sequences = generator.generate(input_ids, attention_mask, max_new_tokens=64, num_beams=4, length_penalty=0.6)

`sequences` are the tokens `model.generate()` returns with the same arguments in float32 (greedy, or beam search with
transformers' own beam bookkeeping), up to near-ties of floating-point sums: seq2seq outputs start with the decoder
start token, causal-LM outputs with the prompt; finished rows are padded as generate() pads them.

Why not `model.generate(cache_implementation="static")` with a `CompileConfig`: measured on a 2-core CPU, it is no
faster than the dynamic cache (about 4.8 against 5.5 ms a token at d_model 256), since each step still runs
generate()'s per-step Python (logits processors, stopping criteria, kwargs and cache bookkeeping, mask building,
output recording), Dynamo's guards over the cache objects, and Inductor's default Python wrapper, and at batch 1
that overhead costs more than the model's arithmetic. Here one compiled function does a whole decoding step:
Inductor's CPU inference options (`freezing`: weights become constants, prepacked for MKL/oneDNN; `cpp_wrapper`:
kernels called from C++ instead of Python), a static cache owned by the step (one tensor per layer, written in place),
and a loop that does only what greedy or beam search needs. The encoder (and a causal LM's prompt) runs once per
batch through the model's own forward; the step reuses the model's modules (embeddings, projections, layer norms,
residual blocks, feed-forward), so only the cache plumbing and attention over it are written here.

Shapes are bucketed so that a new batch rarely compiles: the batch and the source length are rounded up to a power of
two (at least 16 source positions), the cache to a multiple of 64 positions. A bucket compiles once per process
(greedy and beam search once each); Inductor's FX graph cache and AOT autograd cache (on disk, on by default) make a
later process pay only part of it. `quantization="int8"`: torchao's int8 weights and dynamically quantized int8
activations in the decoder's linear layers and the output projection. On CUDA the step is compiled with
`mode="reduce-overhead"` (CUDA graphs) instead of the CPU options.
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin


QUANTIZATIONS = (None, "int8")
# Inductor options for a CPU inference step: frozen (constant, prepacked) weights and a C++ wrapper around kernels.
CPU_INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True}
MIN_SOURCE_BUCKET = 16
CACHE_BUCKET = 64
RECOMPILE_LIMIT = 64  # one compiled graph per shape bucket; Dynamo's default (8) would fall back to eager after 8


def bucket_size(size: int, minimum: int = 1) -> int:
    """The power of two at or above `size` (and `minimum`): the padded size a compiled shape is made for."""
    return max(minimum, 1 << max(0, size - 1).bit_length())


class StaticCacheDecoderStep(nn.Module):
    """One decoding step of the decoder over a static cache of `rows` x `max_length` positions.

    The step owns each layer's self-attention keys and values (buffers it writes in place). What changes per batch
    is passed to `forward` instead, so that frozen compilation does not bake it in as a constant: the
    cross-attention keys and values of the encoder output (seq2seq), which cache positions hold real tokens (a
    causal LM's left-padded prompt leaves gaps), and how many padding positions precede each row's tokens
    (positions count real tokens only, as in the model). `new_batch_state` makes those tensors.
    """

    def __init__(self, model: nn.Module, rows: int, max_length: int, source_length: int):
        super().__init__()
        config = model.config
        self.decoder, self.lm_head = model.model.decoder, model.lm_head
        if hasattr(self.decoder.embed_positions, "table"):  # grow a sinusoid table now, not inside the graph
            self.decoder.embed_positions.check_length(max_length)
        self.heads, self.head_dim = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
        self.rows, self.max_length, self.source_length = rows, max_length, source_length
        self.is_encoder_decoder = config.is_encoder_decoder
        device, self.dtype = model.lm_head.weight.device, model.dtype
        # One tensor per layer, written in place with `index_copy_`: slices of one stacked tensor would make
        # Inductor copy the whole cache at every step.
        shape = (rows, self.heads, max_length, self.head_dim)
        for index in range(len(self.decoder.layers)):
            for kind in ("keys", "values"):
                cache = torch.zeros(shape, device=device, dtype=self.dtype)
                self.register_buffer(f"{kind}_{index}", cache, persistent=False)
        self.register_buffer("slots", torch.arange(max_length, device=device), persistent=False)

    def new_batch_state(self) -> dict[str, torch.Tensor]:
        """Zeroed per-batch inputs of `forward` (see the class docstring), filled by the caller."""
        device = self.slots.device
        state = {
            "real_slots": torch.ones(self.rows, self.max_length, device=device, dtype=torch.bool),
            "padding": torch.zeros(self.rows, 1, device=device, dtype=torch.long),
        }
        if self.is_encoder_decoder:
            shape = (len(self.decoder.layers), self.rows, self.heads, self.source_length, self.head_dim)
            state["cross_keys"] = torch.zeros(shape, device=device, dtype=self.dtype)
            state["cross_values"] = torch.zeros_like(state["cross_keys"])
            state["source_mask"] = torch.zeros(self.rows, 1, 1, self.source_length, device=device, dtype=torch.bool)
        return state

    def forward(
        self, input_ids, cache_position, real_slots, padding, cross_keys=None, cross_values=None, source_mask=None,
        beam_rows=None,
    ) -> torch.Tensor:  # fmt: skip
        """Logits (rows, vocab) of the next token after `input_ids` (rows, 1), written at `cache_position` (1,).
        `beam_rows`: the cache row each row continues (beam search reorders the cache first)."""
        if beam_rows is not None:
            for cache in self.caches():
                cache.copy_(cache.index_select(0, beam_rows))
        _, hidden_states = self.decoder.embed(input_ids, None, cache_position - padding)  # (rows, 1, d_model)
        attends = (self.slots <= cache_position) & real_slots  # (rows, max_length)
        self_mask = attends[:, None, None, :]  # (rows, 1, 1, max_length)
        for index, layer in enumerate(self.decoder.layers):
            attention = partial(self.self_attention, layer.self_attn, index, cache_position, self_mask)
            hidden_states = layer.residual(layer.self_attn_layer_norm, attention, hidden_states)
            if self.is_encoder_decoder:
                keys_values = (cross_keys[index], cross_values[index])
                attention = partial(self.cross_attention, layer.cross_attn, *keys_values, source_mask)
                hidden_states = layer.residual(layer.cross_attn_layer_norm, attention, hidden_states)
            hidden_states = layer.residual(layer.feed_forward_layer_norm, layer.feed_forward, hidden_states)
        hidden_states = self.decoder.final_layer_norm(hidden_states)
        return self.lm_head(hidden_states[:, -1]).float()

    def caches(self) -> list[torch.Tensor]:
        layers = range(len(self.decoder.layers))
        return [getattr(self, f"{kind}_{index}") for index in layers for kind in ("keys", "values")]

    def self_attention(self, attention, index: int, cache_position, mask, hidden_states):
        query, key, value = attention.split_heads(attention.qkv_proj(hidden_states), 3)  # (rows, heads, 1, head_dim)
        keys, values = getattr(self, f"keys_{index}"), getattr(self, f"values_{index}")
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
class Bucket:
    """A shape bucket: its step (eager module), the callable that runs it (compiled or not), its per-batch inputs."""

    step: StaticCacheDecoderStep
    run: Callable
    state: dict[str, torch.Tensor]

    inductor_options: dict = field(default_factory=dict)  # set while a call compiles
    compiled_variants: set = field(default_factory=set)  # greedy (False) and beam search (True) steps compiled

    def __call__(self, input_ids: torch.Tensor, slot: int, beam_rows: torch.Tensor | None = None) -> torch.Tensor:
        if self.step.slots.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
        position = torch.tensor([slot], device=input_ids.device)
        # Dynamo's guards cost about 0.1 ms a step on a CPU; `set_stance(skip_guard_eval_unsafe=True)` would save it,
        # but turns any later guard failure (a tensor made outside inference mode) into an error, not a recompile.
        variant = beam_rows is not None
        if variant in self.compiled_variants:
            return self.run(input_ids, position, **self.state, beam_rows=beam_rows)
        # Inductor reads `freezing` outside of `torch.compile(options=...)`'s patch: set for the call that compiles
        # (about 30 us a call otherwise).
        with torch._inductor.config.patch(self.inductor_options):
            logits = self.run(input_ids, position, **self.state, beam_rows=beam_rows)
        self.compiled_variants.add(variant)
        return logits


class CompiledGenerator:
    """Greedy and beam-search generation through `StaticCacheDecoderStep`, compiled once per shape bucket.

    `model`: a `VaswaniForConditionalGeneration` or `VaswaniForCausalLM` (put on its device first; it is not
    modified: quantization works on a copy). `quantization`: None or "int8" (torchao, see `quantize`).
    `compile`: False runs the same steps eagerly; `backend`: any `torch.compile` backend (tests count compilations
    with a counting one). Special tokens come from `model.generation_config`.
    """

    def __init__(self, model: nn.Module, quantization: str | None = None, compile: bool = True, backend="inductor"):
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
        if not hasattr(model, "lm_head") or not hasattr(model.model, "decoder"):
            raise ValueError(f"{type(model).__name__} does not generate: use a seq2seq or causal LM view.")
        self.device = model.device
        self.model = quantize(model, quantization) if quantization else model
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
        self.compile, self.backend = compile, backend
        # oneDNN's int8 matrix product (what Inductor makes of torchao's int8 linear) takes about 40x longer for one
        # row than for two on a CPU (5.9 ms against 0.13 ms for 8000 x 256): a single sentence decodes as two.
        self.min_batch = 2 if quantization == "int8" and self.device.type == "cpu" else 1
        self.buckets: dict[tuple[int, int, int], Bucket] = {}

    def bucket_for(self, rows: int, max_length: int, source_length: int) -> "Bucket":
        """The step, compiled, and per-batch state of a shape bucket, built on first use."""
        key = (rows, math.ceil(max_length / CACHE_BUCKET) * CACHE_BUCKET, source_length)
        if key not in self.buckets:
            step = StaticCacheDecoderStep(self.model, *key)
            state = step.new_batch_state()
            if self.device.type == "cuda":  # CUDA graphs replay on fixed addresses: these tensors never move
                for tensor in (*step.buffers(), *state.values()):
                    torch._dynamo.mark_static_address(tensor)
            options = CPU_INDUCTOR_OPTIONS if self.device.type == "cpu" else {}
            self.buckets[key] = Bucket(step, self.compiled(step) if self.compile else step, state, options)
        return self.buckets[key]

    def compiled(self, step: StaticCacheDecoderStep) -> nn.Module:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        if self.backend != "inductor":
            return torch.compile(step, backend=self.backend, fullgraph=True, dynamic=False)
        if self.device.type == "cuda":
            return torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        return torch.compile(step, fullgraph=True, dynamic=False, options=CPU_INDUCTOR_OPTIONS)

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
        # Extra rows (copies of the first) fill the batch up to its bucket; they are dropped from the outputs.
        padded = bucket_size(batch, self.min_batch)
        input_ids, attention_mask = (pad_rows(tensor, padded) for tensor in (input_ids, attention_mask))
        prompt_length = 1 if self.config.is_encoder_decoder else input_ids.shape[1]
        self.model.model.decoder.embed_positions.check_length(prompt_length + max_new_tokens - 1)  # learned: a limit
        if self.config.is_encoder_decoder:
            bucket, prompt, logits, slot = self.start_seq2seq(input_ids, attention_mask, num_beams, max_new_tokens)
        else:
            bucket, prompt, logits, slot = self.start_causal(input_ids, attention_mask, num_beams, max_new_tokens)
        limits = (max_new_tokens, min_new_tokens)
        if num_beams == 1:
            return self.greedy_search(bucket, prompt, logits, slot, *limits, batch)
        return self.beam_search(bucket, prompt, logits, slot, *limits, batch, num_beams, length_penalty)

    def start_seq2seq(self, input_ids, attention_mask, num_beams: int, max_new_tokens: int):
        """Encodes the sources (the model's own encoder, once per batch) and runs the first decoding step."""
        encoder_states = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        encoder_states, attention_mask = (t.repeat_interleave(num_beams, 0) for t in (encoder_states, attention_mask))
        rows, length = attention_mask.shape
        bucket = self.bucket_for(rows, max_new_tokens, bucket_size(length, MIN_SOURCE_BUCKET))
        state = bucket.state
        state["source_mask"].zero_()
        state["source_mask"][:, 0, 0, :length] = attention_mask.bool()
        for index, layer in enumerate(self.model.model.decoder.layers):
            key, value = layer.cross_attn.split_heads(layer.cross_attn.kv_proj(encoder_states), 2)
            state["cross_keys"][index, :, :, :length] = key  # (rows, heads, source, head_dim)
            state["cross_values"][index, :, :, :length] = value
        prompt = torch.full((rows, 1), self.decoder_start_token_id, device=self.device, dtype=torch.long)
        return bucket, prompt, bucket(prompt, 0), 1

    def start_causal(self, input_ids, attention_mask, num_beams: int, max_new_tokens: int):
        """Runs the prompt through the model's own forward (once per batch) and copies its cache into the bucket's."""
        input_ids, attention_mask = (t.repeat_interleave(num_beams, 0) for t in (input_ids, attention_mask))
        rows, length = input_ids.shape
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
        bucket = self.bucket_for(rows, length + max_new_tokens, 0)
        for index, layer in enumerate(outputs.cache.layers):
            getattr(bucket.step, f"keys_{index}")[:, :, :length] = layer.keys
            getattr(bucket.step, f"values_{index}")[:, :, :length] = layer.values
        bucket.state["real_slots"].fill_(True)
        bucket.state["real_slots"][:, :length] = attention_mask.bool()
        bucket.state["padding"].copy_((length - attention_mask.sum(-1, keepdim=True)))
        return bucket, input_ids, outputs.logits[:, -1].float(), length

    def greedy_search(self, bucket, prompt, logits, slot: int, max_new_tokens: int, min_new_tokens: int, batch: int):
        """Greedy decoding as `generate()` does it: after EOS a row gets padding; all stop when the last of the
        `batch` real rows has ended."""
        tokens, finished = [], torch.zeros(prompt.shape[0], dtype=torch.bool, device=self.device)
        for index in range(max_new_tokens):
            if index > 0:
                logits = bucket(tokens[-1][:, None], slot + index - 1)
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
        self, bucket, prompt, logits, slot: int, max_new_tokens: int, min_new_tokens: int, batch: int,
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
                beam_rows = running_beam_indices[..., new_tokens - 1].flatten()
                logits = bucket(running_sequences[:, :, cur_len - 1].reshape(rows, 1), slot + new_tokens - 1, beam_rows)
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


def quantize(model: nn.Module, quantization: str) -> nn.Module:
    """A copy of `model` whose decoder linear layers and output projection hold int8 weights and quantize their
    activations to int8 on the fly (torchao's `Int8DynamicActivationInt8WeightConfig`; Inductor turns them into
    oneDNN int8 matrix products). The encoder runs once per batch and stays in float.

    Int8 weights with float activations (torchao's `Int8WeightOnlyConfig`) are not offered: frozen by Inductor, the
    weights are converted back to float32 constants, so they decode no faster than float32 and less exactly."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as error:
        raise ImportError("int8 decoding needs torchao: pip install 'vaswani[torchao]'") from error
    model = copy.deepcopy(model)
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())  # untied: the embedding stays float
    in_decoder = partial(is_decoder_linear, decoder=model.model.decoder, lm_head=model.lm_head)
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=in_decoder)
    return model


def is_decoder_linear(module: nn.Module, name: str, decoder: nn.Module, lm_head: nn.Module) -> bool:
    return isinstance(module, nn.Linear) and (module is lm_head or any(module is m for m in decoder.modules()))
