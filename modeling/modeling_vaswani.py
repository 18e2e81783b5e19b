"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model family.

Read top-down in the order of the paper's Figure 1:

| paper                                          | here                                                    |
|------------------------------------------------|---------------------------------------------------------|
| §3.5 positional encoding                       | `VaswaniSinusoidalPositions` (`VaswaniLearnedPositions`) |
| §3.4 embeddings, scaled by sqrt(d_model)       | `VaswaniScaledEmbedding`: one matrix, `model.shared`    |
| §3.2.1 scaled dot-product attention            | `eager_attention_forward`; sdpa/flex via transformers   |
| §3.2.2-3 multi-head attention in three roles   | `VaswaniAttention`                                      |
| §3.3 position-wise feed-forward network        | `VaswaniFeedForward`                                    |
| §3.1 residual + layer norm, §5.4 dropout       | `VaswaniResidualLayer.residual`, `on_real_tokens`       |
| §3.1 encoder and decoder layers                | `VaswaniEncoderLayer`, `VaswaniDecoderLayer`            |
| §3.1 encoder and decoder stacks                | `VaswaniEncoder`, `VaswaniDecoder`                      |
| Figure 1                                       | `VaswaniModel`                                          |
| §3.4 pre-softmax projection, §5.4 label smoothing | `lm_head` of the LM views, `token_cross_entropy`     |

Outputs follow transformers 5.x: layers return one tensor, and `hidden_states` / `attentions` /
`cross_attentions` are recorded by `capture_outputs` from the classes each stack lists in `_can_record_outputs`.

One encoder and one decoder serve four views with the same parameter names (`model.shared`,
`model.encoder.*`, `model.decoder.*`, `lm_head`), so a checkpoint of one view loads into another:
`VaswaniForConditionalGeneration` (translation), `VaswaniForMaskedLM` (encoder only, BERT-style),
`VaswaniForCausalLM` (decoder only, GPT-style, without cross-attention weights) and
`VaswaniForSequenceClassification` (encoder only). `VaswaniModel` builds the stacks that
`config.is_encoder_decoder` and `config.is_decoder` ask for; each view sets those two flags itself.
"""

import copy
import math
from collections.abc import Callable
from functools import partial
from typing import Unpack

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput, BaseModelOutputWithPastAndCrossAttentions, CausalLMOutputWithCrossAttentions, MaskedLMOutput,
    Seq2SeqLMOutput, Seq2SeqModelOutput, SequenceClassifierOutput,
)  # fmt: skip
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import TransformersKwargs, can_return_tuple, is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs


try:  # a Hub checkpoint carries this file next to configuration_vaswani.py
    from .configuration_vaswani import VaswaniConfig
except ImportError:  # the installed package
    from vaswani.configuration.configuration_vaswani import VaswaniConfig


# ----------------------------------------------------------------------------------------------- embeddings


class VaswaniSinusoidalPositions(nn.Module):
    """Positional encoding, §3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...).

    A table of the first `max_position_embeddings` positions, looked up like an embedding: computing sines and
    cosines on every call costs a decoding step more than its attention does. The table grows when a longer
    sequence comes (`check_length`), so the encoding still extends to any length.
    """

    def __init__(self, config: VaswaniConfig):
        super().__init__()
        self.d_model = config.d_model
        self.table = nn.Buffer(self.sinusoids(config.max_position_embeddings, config.d_model), persistent=False)

    @staticmethod
    def sinusoids(num_positions: int, d_model: int) -> torch.Tensor:
        frequencies = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        angles = torch.arange(num_positions, dtype=torch.float32).unsqueeze(-1) * frequencies
        # Interleave so that dimension 2i holds the sine and 2i + 1 the cosine of the same frequency.
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (positions, d_model)

    def check_length(self, length: int) -> None:
        """Every length is fine: the table is rebuilt, twice as long, when `length` positions do not fit."""
        if length > self.table.shape[0]:
            longer = self.sinusoids(max(length, 2 * self.table.shape[0]), self.d_model)
            self.table = longer.to(self.table.device, self.table.dtype)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.table)  # (batch, seq, d_model)


class VaswaniLearnedPositions(nn.Embedding):
    """Learned positional embeddings, the variant of Table 3 (E); limited to `max_position_embeddings`."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(config.max_position_embeddings, config.d_model)

    def check_length(self, length: int) -> None:
        if length > self.num_embeddings:
            raise ValueError(
                f"Sequence of {length} positions is longer than max_position_embeddings ({self.num_embeddings}), "
                "the number of learned positions. Truncate the input, or use position_embedding_type='sinusoidal', "
                "which extends to any length."
            )


class VaswaniScaledEmbedding(nn.Embedding):
    """Token embedding multiplied by sqrt(d_model), §3.4. One instance is shared by encoder, decoder and lm_head."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """Out-of-vocabulary ids would index past the embedding (a cryptic device-side assert on GPU): name them."""
    if input_ids.numel() == 0 or is_torchdynamo_compiling():
        return
    smallest, largest = torch.aminmax(input_ids)
    if smallest < 0 or largest >= vocab_size:
        raise ValueError(
            f"{name} holds ids in [{int(smallest)}, {int(largest)}] but the vocabulary is [0, {vocab_size}). "
            "Was the input made by another tokenizer? Use the tokenizer saved with the model, or call "
            "model.resize_token_embeddings(len(tokenizer)) after adding tokens."
        )


def check_tensor_kind(tensor, name: str, dims: int, integer: bool) -> None:
    """Ids are a (batch, positions) tensor of integers, embeddings a (batch, positions, d_model) one of floats:
    anything else (a list, floats or booleans as ids, a missing batch dimension) would fail deep inside torch."""
    if not torch.is_tensor(tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(tensor).__name__}: call the tokenizer with "
                        "return_tensors='pt'.")  # fmt: skip
    if integer and tensor.dtype not in (torch.long, torch.int):
        raise ValueError(f"{name} has dtype {tensor.dtype} but token ids are integers (torch.long): pass the "
                         "tokenizer's ids, or embeddings as inputs_embeds.")  # fmt: skip
    if not integer and not tensor.is_floating_point():
        raise ValueError(f"{name} has dtype {tensor.dtype} but embeddings are floats: pass token ids as input_ids.")
    if tensor.dim() != dims:
        layout = "(batch, positions)" if dims == 2 else "(batch, positions, d_model)"
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but must be {dims}-D {layout}: for one sequence, "
                         "add the batch dimension with .unsqueeze(0).")  # fmt: skip


def check_inputs(input_ids, inputs_embeds, attention_mask, vocab_size: int, name: str, past_length=0) -> None:
    """Inputs of the wrong kind, empty inputs, masks of another shape and ids outside the vocabulary fail here,
    named, not deep inside.

    The vocabulary check reads the ids back to the host, so it runs where inputs enter, not on decoding steps
    (`past_length` above 0, or a static cache's device tensor), whose ids the model generated itself: a
    device-to-host copy per generated token would stall a GPU's queue.
    """
    if input_ids is not None:
        check_tensor_kind(input_ids, name, dims=2, integer=True)
    else:
        check_tensor_kind(inputs_embeds, name.replace("input_ids", "inputs_embeds"), dims=3, integer=False)
    tokens = input_ids if input_ids is not None else inputs_embeds
    batch_size, length = tokens.shape[:2]
    if batch_size == 0 or length == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tokens.shape)}): pass at least one row of one token.")
    if attention_mask is not None and not torch.is_tensor(attention_mask):
        raise TypeError(f"The attention mask of {name} must be a torch.Tensor, not {type(attention_mask).__name__}.")
    if attention_mask is not None and not fits_inputs(attention_mask, batch_size, past_length, length):
        cached = f" ({past_length} cached + {length} new)" if past_length else ""
        raise ValueError(
            f"The attention mask of {name} has shape {tuple(attention_mask.shape)} but must be 2-D "
            f"(batch, positions) = {(batch_size, past_length + length)}{cached}, 1 for tokens and 0 for "
            "padding (or a 4-D mask made by transformers' mask helpers, as generate() makes for static caches)."
        )
    if input_ids is not None and not torch.is_tensor(past_length) and past_length == 0:
        check_token_ids(input_ids, vocab_size, name)


def fits_inputs(attention_mask: torch.Tensor, batch_size: int, past_length: int, length: int) -> bool:
    """A 2-D mask covers the cached and the new positions; a prepared 4-D one is (batch, 1 or heads, new, keys)."""
    if attention_mask.dim() == 2 and torch.is_tensor(past_length):  # a static cache's count: no host read
        return attention_mask.shape[0] == batch_size
    if attention_mask.dim() == 2:
        return tuple(attention_mask.shape) == (batch_size, past_length + length)
    return attention_mask.dim() == 4 and attention_mask.shape[0] == batch_size and attention_mask.shape[2] == length


def positions_from_mask(attention_mask: torch.Tensor | None, past_length: int, length: int, device) -> torch.Tensor:
    """Position of each new token counting only real tokens, so that left padding does not shift positions."""
    if attention_mask is None or attention_mask.dim() != 2:  # a prepared 4-D mask comes with position_ids
        return (torch.arange(length, device=device) + past_length).unsqueeze(0)  # (1, seq)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]  # (batch, seq)


def real_token_rows(attention_mask: torch.Tensor | None, length: int, read_mask: bool = True):
    """The real tokens among the last `length` positions, for `on_real_tokens`: None without padding, else their
    flat indices (batch * seq). Finding them reads the mask back to the host, which a decoding step must not wait
    for (`read_mask=False`), nor can a compiled graph (no data-dependent shapes): then a (batch, seq, 1) bool mask."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    new_tokens = attention_mask[:, -length:].bool()
    if not read_mask or is_torchdynamo_compiling():
        return new_tokens.unsqueeze(-1)
    return None if new_tokens.all() else new_tokens.flatten().nonzero().squeeze(-1)


def trailing_label_padding(labels: torch.Tensor) -> torch.Tensor:
    """1 up to each row's last labelled position, 0 after it: the decoder's outputs there feed neither the loss nor,
    through the causal mask, any earlier position. Position 0 is always kept, so that every query has a key."""
    labelled = labels != -100
    keep = labelled.flip(-1).cummax(-1).values.flip(-1)
    keep[:, 0] = True
    return keep.long()


# ----------------------------------------------------------------------------------------------- attention


def eager_attention_forward(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Scaled dot-product attention, §3.2.1: softmax(Q K^T / sqrt(d_k)) V, returning the weights too.

    Reads transformers' eager masks (additive floats) and, so that `output_attentions=True` also works on a model
    set up for sdpa, sdpa's masks too: booleans, or `None` with `module.is_causal`.
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (batch, heads, q_len, kv_len)
    if attention_mask is None and module.is_causal and query.shape[2] > 1:
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (batch, q_len, heads, head_dim)
    return output, weights


def self_attention_cache(cache: Cache | None) -> Cache | None:
    """The self-attention part of a cache: an `EncoderDecoderCache` holds it next to the cross-attention part."""
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


class VaswaniAttention(nn.Module):
    """Multi-head attention, §3.2.2, in the three roles of §3.2.3: encoder self, decoder (causal) self, cross.

    Self-attention projects queries, keys and values with one fused matrix (`qkv_proj`); cross-attention projects
    queries from the decoder (`q_proj`) and keys and values from the encoder output (`kv_proj`) once per
    generation: the cache keeps them. The projections have no biases, as in the authors' tensor2tensor: a key
    bias adds the same score to every key of a query, which softmax ignores, so its gradient is zero and only
    numerical noise, which Adam (eps 1e-9) would turn into full-size steps.
    """

    def __init__(self, config: VaswaniConfig, layer_idx: int, role: str):
        super().__init__()
        if role not in ("encoder", "decoder", "cross"):
            raise ValueError(f"role must be 'encoder', 'decoder' or 'cross', got {role!r}")
        self.config = config
        self.layer_idx = layer_idx
        self.is_cross_attention = role == "cross"
        self.is_causal = role == "decoder"  # set explicitly: sdpa reads a missing flag as causal
        num_heads = config.encoder_attention_heads if role == "encoder" else config.decoder_attention_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        if self.is_cross_attention:
            self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
            self.kv_proj = nn.Linear(config.d_model, 2 * config.d_model, bias=False)
        else:
            self.qkv_proj = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def split_heads(self, projected: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        batch, length, _ = projected.shape
        projected = projected.view(batch, length, parts, -1, self.head_dim)  # (batch, seq, parts, heads, head_dim)
        return projected.permute(2, 0, 3, 1, 4).unbind(0)  # parts x (batch, heads, seq, head_dim)

    def self_attention_states(self, hidden_states: torch.Tensor, cache: Cache | None):
        query, key, value = self.split_heads(self.qkv_proj(hidden_states), 3)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        return query, key, value

    def cross_attention_states(self, hidden_states, encoder_hidden_states, cache: EncoderDecoderCache | None):
        (query,) = self.split_heads(self.q_proj(hidden_states), 1)
        if cache is not None and cache.is_updated.get(self.layer_idx):
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            return query, cached.keys, cached.values
        key, value = self.split_heads(self.kv_proj(encoder_hidden_states), 2)
        if cache is not None:
            key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
            cache.is_updated[self.layer_idx] = True
        return query, key, value

    def forward(
        self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None, cache=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """Returns the output and the attention weights (None from kernels that compute none, such as sdpa's).
        `cache`: the stack's cache; an `EncoderDecoderCache` holds the self- and cross-attention parts."""
        if self.is_cross_attention:
            query, key, value = self.cross_attention_states(hidden_states, encoder_hidden_states, cache)
        else:
            query, key, value = self.self_attention_states(hidden_states, self_attention_cache(cache))
        implementation = self.config._attn_implementation
        if implementation == "sdpa" and kwargs.get("output_attentions", self.config.output_attentions):
            implementation = "eager"  # sdpa computes no weights; eager reads sdpa's masks
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self, query, key, value, attention_mask, dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling, **kwargs,
        )  # fmt: skip
        output = output.reshape(*hidden_states.shape[:-1], -1)  # (batch, seq, d_model)
        return self.out_proj(output), weights


# ----------------------------------------------------------------------------------------------- layers


class VaswaniFeedForward(nn.Module):
    """Position-wise feed-forward network, §3.3: FFN(x) = max(0, x W1 + b1) W2 + b2 (ReLU, or GELU/SiLU)."""

    def __init__(self, config: VaswaniConfig, is_decoder: bool):
        super().__init__()
        ffn_dim = config.decoder_ffn_dim if is_decoder else config.encoder_ffn_dim
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.fc1(hidden_states))
        return self.fc2(F.dropout(hidden_states, p=self.activation_dropout, training=self.training))


def on_real_tokens(position_wise: Callable, hidden_states: torch.Tensor, token_rows: torch.Tensor | None):
    """`position_wise(hidden_states)` on the real tokens (`real_token_rows`), the padded positions keeping their
    input. The feed-forward network is position-wise and padding is never attended to, so its work on padding,
    often half of a batch of sentences, is skipped where the rows are known (a bool mask only selects)."""
    if token_rows is None:
        return position_wise(hidden_states)
    if token_rows.dtype == torch.bool:
        return torch.where(token_rows, position_wise(hidden_states), hidden_states)
    flat = hidden_states.flatten(0, 1)  # (batch * seq, d_model)
    tokens = position_wise(flat.index_select(0, token_rows))
    return flat.index_copy(0, token_rows, tokens).view_as(hidden_states)


class VaswaniResidualLayer(GradientCheckpointingLayer):
    """A layer of residual blocks, §3.1 and §5.4; the encoder and decoder layers add their sub-layers."""

    def __init__(self, config: VaswaniConfig):
        super().__init__()
        self.pre_norm = config.layer_norm_position == "pre"
        self.dropout = config.dropout

    def residual(self, norm: nn.LayerNorm, sublayer: Callable, hidden_states: torch.Tensor) -> torch.Tensor:
        """Post-LN as in the paper: LayerNorm(x + Dropout(Sublayer(x))). Pre-LN for deep stacks:
        x + Dropout(Sublayer(LayerNorm(x))), and the stack ends with one more LayerNorm. Of an attention
        sub-layer's (output, weights), the output."""
        output = sublayer(norm(hidden_states) if self.pre_norm else hidden_states)
        output = output[0] if isinstance(output, tuple) else output
        hidden_states = hidden_states + F.dropout(output, p=self.dropout, training=self.training)
        return hidden_states if self.pre_norm else norm(hidden_states)


class VaswaniEncoderLayer(VaswaniResidualLayer):
    """Encoder layer, §3.1: multi-head self-attention, then the feed-forward network."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__(config)
        self.self_attn = VaswaniAttention(config, layer_idx, role="encoder")
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = VaswaniFeedForward(config, is_decoder=False)
        self.feed_forward_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask=None, token_rows=None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        self_attention = partial(self.self_attn, attention_mask=attention_mask, **kwargs)
        hidden_states = self.residual(self.self_attn_layer_norm, self_attention, hidden_states)
        feed_forward = partial(self.residual, self.feed_forward_layer_norm, self.feed_forward)
        return on_real_tokens(feed_forward, hidden_states, token_rows)


class VaswaniDecoderLayer(VaswaniResidualLayer):
    """Decoder layer, §3.1: masked self-attention, attention over the encoder output, then feed-forward.

    The decoder-only view (`config.is_encoder_decoder=False`) has no cross-attention weights at all.
    """

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__(config)
        self.self_attn = VaswaniAttention(config, layer_idx, role="decoder")
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        if config.is_encoder_decoder:
            self.cross_attn = VaswaniAttention(config, layer_idx, role="cross")
            self.cross_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = VaswaniFeedForward(config, is_decoder=True)
        self.feed_forward_layer_norm = nn.LayerNorm(config.d_model)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
        encoder_attention_mask=None, cache: Cache | None = None, token_rows=None, **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:  # fmt: skip
        self_attention = partial(self.self_attn, attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = self.residual(self.self_attn_layer_norm, self_attention, hidden_states)
        if encoder_hidden_states is not None:
            cross_attention = partial(
                self.cross_attn, attention_mask=encoder_attention_mask, encoder_hidden_states=encoder_hidden_states,
                cache=cache, **kwargs,
            )  # fmt: skip
            hidden_states = self.residual(self.cross_attn_layer_norm, cross_attention, hidden_states)
        feed_forward = partial(self.residual, self.feed_forward_layer_norm, self.feed_forward)
        return on_real_tokens(feed_forward, hidden_states, token_rows)


# ----------------------------------------------------------------------------------------------- base class


class VaswaniPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the capabilities transformers reads off every model class."""

    config: VaswaniConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VaswaniEncoderLayer", "VaswaniDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True

    def __init__(self, config: VaswaniConfig, *inputs, **kwargs):
        config.validate()  # fields may have been changed after the config was built
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Xavier-uniform projections as in the reference implementations (tensor2tensor, fairseq, the Annotated
        Transformer), fused ones over their whole matrix as torch.nn.MultiheadAttention does; embeddings
        N(0, d_model^-0.5), so that once scaled by sqrt(d_model) they have unit variance."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.d_model**-0.5)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VaswaniSinusoidalPositions):
            init.copy_(module.table, module.sinusoids(*module.table.shape))

    def check_labels(self, labels, name: str = "labels", input_ids=None, inputs_embeds=None) -> None:
        """Token labels are a 2-D integer tensor of ids in the vocabulary or -100, aligned with the inputs if given."""
        if labels is None:
            return
        check_tensor_kind(labels, name, dims=2, integer=True)
        if labels.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(labels.shape)}): pass at least one row of one token.")
        inputs, inputs_name = (input_ids, "input_ids") if input_ids is not None else (inputs_embeds, "inputs_embeds")
        if torch.is_tensor(inputs) and labels.shape != inputs.shape[:2]:
            raise ValueError(f"{name} have shape {tuple(labels.shape)} but {inputs_name} {tuple(inputs.shape[:2])}.")
        check_token_ids(labels.masked_fill(labels == -100, 0), self.config.vocab_size, name)


def view_config(config: VaswaniConfig, is_encoder_decoder: bool, is_decoder: bool) -> VaswaniConfig:
    """The config of one view: a copy when the flags change, so that the caller's config is never mutated."""
    if (config.is_encoder_decoder, config.is_decoder) == (is_encoder_decoder, is_decoder):
        return config
    config = copy.deepcopy(config)
    config.is_encoder_decoder, config.is_decoder = is_encoder_decoder, is_decoder
    return config


# ----------------------------------------------------------------------------------------------- stacks


class VaswaniStack(VaswaniPreTrainedModel):
    """What both stacks of §3.1 share: scaled token embeddings plus positional encodings, dropout (§5.4),
    N identical layers and, with pre-LN, a final layer norm. Their outputs (`hidden_states`, `attentions`) are
    recorded by transformers' `capture_outputs` from the classes in `_can_record_outputs`."""

    layer_class: type[VaswaniResidualLayer]
    _tp_plan = VaswaniConfig.stack_tp_plan  # tensor parallelism: see the config
    _fsdp_plan = {"layers.*": "free_full_weight"}  # FSDP2: a unit per layer; the shared embedding stays in the root's
    num_layers_field: str

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.embed_tokens = VaswaniScaledEmbedding(config)  # its weight is tied to `VaswaniModel.shared`
        positions_class = VaswaniLearnedPositions if config.position_embedding_type == "learned" else None
        self.embed_positions = (positions_class or VaswaniSinusoidalPositions)(config)
        num_layers = getattr(config, self.num_layers_field)
        self.layers = nn.ModuleList(self.layer_class(config, layer_idx) for layer_idx in range(num_layers))
        if config.layer_norm_position == "pre":
            self.layer_norm = nn.LayerNorm(config.d_model)
        self.post_init()

    def embed(self, input_ids, inputs_embeds, position_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the token embeddings alone (masks read their shape) and the stack's input, with positions."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = inputs_embeds + self.embed_positions(position_ids).to(inputs_embeds.dtype)
        return inputs_embeds, F.dropout(hidden_states, p=self.config.dropout, training=self.training)

    def final_layer_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(hidden_states) if hasattr(self, "layer_norm") else hidden_states


class VaswaniEncoder(VaswaniStack):
    """Encoder stack, §3.1: N layers of self-attention and feed-forward over the source."""

    layer_class = VaswaniEncoderLayer
    num_layers_field = "encoder_layers"
    _can_record_outputs = {"hidden_states": VaswaniEncoderLayer, "attentions": VaswaniAttention}

    @capture_outputs
    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds to the encoder.")
        check_inputs(input_ids, inputs_embeds, attention_mask, self.config.vocab_size, "input_ids")
        tokens = input_ids if input_ids is not None else inputs_embeds
        self.embed_positions.check_length(tokens.shape[1])
        positions = positions_from_mask(attention_mask, 0, tokens.shape[1], tokens.device)
        inputs_embeds, hidden_states = self.embed(input_ids, inputs_embeds, positions)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        token_rows = real_token_rows(attention_mask, tokens.shape[1])
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, token_rows=token_rows, **kwargs)
        return BaseModelOutput(last_hidden_state=self.final_layer_norm(hidden_states))


class VaswaniDecoder(VaswaniStack):
    """Decoder stack, §3.1: N layers whose self-attention is masked so that position i sees only positions <= i."""

    layer_class = VaswaniDecoderLayer
    num_layers_field = "decoder_layers"
    _can_record_outputs = {
        "hidden_states": OutputRecorder(VaswaniDecoderLayer, num_hidden_layers_key="decoder_layers"),
        "attentions": OutputRecorder(VaswaniAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(VaswaniAttention, index=1, layer_name="cross_attn"),
    }

    def check_encoder_states(self, encoder_hidden_states, encoder_attention_mask, batch_size: int) -> None:
        if self.config.is_encoder_decoder and encoder_hidden_states is None:
            raise ValueError("The decoder of the encoder-decoder model needs encoder_hidden_states to attend to.")
        if not self.config.is_encoder_decoder and encoder_hidden_states is not None:
            raise ValueError("The decoder-only view has no cross-attention: do not pass encoder_hidden_states.")
        if encoder_hidden_states is None:
            return
        if encoder_hidden_states.shape[0] != batch_size:
            raise ValueError(f"The decoder input has batch size {batch_size} but the encoder output has "
                             f"{encoder_hidden_states.shape[0]}.")  # fmt: skip
        source_shape = tuple(encoder_hidden_states.shape[:2])
        if encoder_attention_mask is not None and tuple(encoder_attention_mask.shape) != source_shape:
            raise ValueError(f"The source attention mask has shape {tuple(encoder_attention_mask.shape)} but must "
                             f"be 2-D (batch, source positions) = {source_shape}, as the encoder output.")  # fmt: skip

    def new_cache(self) -> Cache:
        cache = DynamicCache()
        return EncoderDecoderCache(cache, DynamicCache()) if self.config.is_encoder_decoder else cache

    def positions(self, attention_mask, position_ids, cache: Cache | None, length: int, device) -> torch.Tensor:
        """Position ids of the new tokens, the positional table grown to cover them.

        A cache's length is an int, or a device tensor once a static cache holds tokens (so that compiled steps do
        not recompile): only the first step, where inputs enter, reads explicit `position_ids` back to the host.
        """
        past_length = cache.get_seq_length() if cache is not None else 0
        max_cache_length = cache.get_max_length(0) if cache is not None else -1
        self.embed_positions.check_length(max_cache_length if max_cache_length > 0 else past_length + length)
        if position_ids is None:
            return positions_from_mask(attention_mask, past_length, length, device)
        if not torch.is_tensor(past_length) and past_length == 0 and not is_torchdynamo_compiling():
            self.embed_positions.check_length(int(position_ids.max()) + 1)
        return position_ids

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    @capture_outputs
    def forward(
        self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
        cache: Cache | None = None, inputs_embeds=None, position_ids=None, use_cache=None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:  # fmt: skip
        """`attention_mask` covers the cached tokens and the new ones; positions follow it (left padding)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds to the decoder.")
        tokens = input_ids if input_ids is not None else inputs_embeds
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and cache is None:
            cache = self.new_cache()
        self_cache = self_attention_cache(cache)
        past_length = self_cache.get_seq_length() if self_cache is not None else 0
        name = "decoder_input_ids" if self.config.is_encoder_decoder else "input_ids"
        check_inputs(input_ids, inputs_embeds, attention_mask, self.config.vocab_size, name, past_length)
        self.check_encoder_states(encoder_hidden_states, encoder_attention_mask, tokens.shape[0])
        length = tokens.shape[1]
        position_ids = self.positions(attention_mask, position_ids, self_cache, length, tokens.device)
        inputs_embeds, hidden_states = self.embed(input_ids, inputs_embeds, position_ids)
        self_mask = create_causal_mask(
            config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=self_cache
        )
        cross_mask = None
        if encoder_hidden_states is not None:
            cross_mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=inputs_embeds, attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )  # fmt: skip
        entering = not torch.is_tensor(past_length) and past_length == 0  # decoding steps must not read the mask
        token_rows = real_token_rows(attention_mask, length, read_mask=entering)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, self_mask, encoder_hidden_states,  # positional, for gradient checkpointing
                encoder_attention_mask=cross_mask, cache=cache, token_rows=token_rows, **kwargs,
            )  # fmt: skip
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.final_layer_norm(hidden_states), cache=cache if use_cache else None
        )


# ----------------------------------------------------------------------------------------------- model


class VaswaniModel(VaswaniPreTrainedModel):
    """The Transformer of Figure 1 without a head: encoder and decoder stacks over one shared embedding (§3.4).

    Which stacks exist follows the config: both for `is_encoder_decoder=True`, the decoder alone for
    `is_decoder=True` (causal LM), the encoder alone otherwise (masked LM, classification).
    """

    _tp_plan = {"shared": "embedding_rowwise"}  # vocabulary-parallel; the stacks' embed_tokens are tied to it

    def __init__(self, config: VaswaniConfig):
        super().__init__(config)
        self.shared = VaswaniScaledEmbedding(config)
        stacks = []
        if config.is_encoder_decoder or not config.is_decoder:
            self.encoder = VaswaniEncoder(config)
            stacks.append("encoder")
        if config.is_encoder_decoder or config.is_decoder:
            self.decoder = VaswaniDecoder(config)
            stacks.append("decoder")
        # Parameters, not modules, are tied (as in BART): transformers' loading marks tied targets as initialised,
        # which for one shared module would mark `shared` itself and leave it unloaded.
        self._tied_weights_keys = {f"{stack}.embed_tokens.weight": "shared.weight" for stack in stacks}
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """Source and target always share the embedding (one vocabulary, §3.4); `tie_word_embeddings=False`
        unties only the output projection, which transformers would otherwise untie together with these."""
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys)

    def get_input_embeddings(self) -> VaswaniScaledEmbedding:
        return self.shared

    def set_input_embeddings(self, embeddings: VaswaniScaledEmbedding) -> None:
        self.shared = embeddings
        for stack in ("encoder", "decoder"):
            if hasattr(self, stack):
                getattr(self, stack).embed_tokens = embeddings

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
        encoder_outputs=None, cache: Cache | None = None, inputs_embeds=None, decoder_inputs_embeds=None,
        decoder_position_ids=None, use_cache=None, **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput | BaseModelOutput | BaseModelOutputWithPastAndCrossAttentions:  # fmt: skip
        """Runs the stacks of this view; the encoder-decoder returns a `Seq2SeqModelOutput`.

        A single-stack view reads its input from `input_ids` (and `attention_mask`, `cache`, ...).
        """
        if not hasattr(self, "encoder"):
            return self.decoder(
                input_ids=input_ids, attention_mask=attention_mask, cache=cache, inputs_embeds=inputs_embeds,
                use_cache=use_cache, **kwargs,
            )  # fmt: skip
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if not hasattr(self, "decoder"):
            return encoder_outputs
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError("The encoder-decoder needs decoder_input_ids (or labels, from which "
                             "VaswaniForConditionalGeneration builds them by shifting right).")  # fmt: skip
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state, encoder_attention_mask=attention_mask,
            cache=cache, inputs_embeds=decoder_inputs_embeds, position_ids=decoder_position_ids,
            use_cache=use_cache, **kwargs,
        )  # fmt: skip
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state, cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states, decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
        )  # fmt: skip


# ----------------------------------------------------------------------------------------------- heads


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels (teacher forcing): prepend the start token, drop the last, -100 -> pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def token_cross_entropy(logits, labels, label_smoothing: float = 0.0, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy over the labelled tokens (-100 is ignored), with label smoothing (§5.4) when asked for.

    With `num_items_in_batch` (the labelled tokens of the whole accumulated batch) the sum is divided by it, so
    that gradient accumulation weights every token equally, as one large batch would.
    """
    loss = F.cross_entropy(
        logits.flatten(0, -2).float(),
        labels.flatten().to(logits.device),
        ignore_index=-100,
        reduction="mean" if num_items_in_batch is None else "sum",
        label_smoothing=label_smoothing,
    )
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return loss


class VaswaniLMHeadMixin:
    """The pre-softmax projection, §3.4: `lm_head`, tied to `model.shared` unless `tie_word_embeddings=False`."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}  # vocabulary-parallel, gathered: every rank gets all logits

    def build_lm_head(self) -> None:
        self.lm_head = nn.Linear(self.config.d_model, self.config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, projection: nn.Linear) -> None:
        self.lm_head = projection

    def logits_and_loss(self, hidden_states, labels=None, num_items_in_batch=None, skip_logits=None, logits_to_keep=0):
        """Logits and, with labels, the loss: plain cross-entropy unless `config.label_smoothing` is set (it is 0 by
        default; the paper's 0.1 belongs to the training recipe). Smoothing regularises training only, so that
        evaluation losses stay true perplexities.

        Training with labels scores only the labelled positions (not padding, not the unmasked tokens of masked
        LM) and returns no logits, as transformers' `skip_logits` convention does; pass `skip_logits=False` to get
        them anyway.
        """
        if skip_logits is None:
            skip_logits = self.training and labels is not None
        smoothing = self.config.label_smoothing if self.training else 0.0
        if skip_logits and labels is not None:
            labelled = labels != -100
            logits = self.lm_head(hidden_states[labelled])  # (labelled tokens, vocab)
            return None, token_cross_entropy(logits, labels[labelled], smoothing, num_items_in_batch)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]  # generation needs only the last position
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        loss = token_cross_entropy(logits, labels, smoothing, num_items_in_batch) if labels is not None else None
        return logits, loss


class VaswaniForConditionalGeneration(VaswaniLMHeadMixin, VaswaniPreTrainedModel, GenerationMixin):
    """The encoder-decoder with its pre-softmax projection: translation and other seq2seq tasks."""

    _tp_plan = {**VaswaniLMHeadMixin._tp_plan, **VaswaniConfig.cross_attention_tp_plan}  # see the config

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=True, is_decoder=False))
        self.model = VaswaniModel(self.config)
        self.build_lm_head()
        self.post_init()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def decoder_inputs_from_labels(self, labels, decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask):
        """Teacher forcing: the labels shifted right, unless decoder inputs are given, and in training a mask that
        ends each row at its last label, so that the decoder skips the padding after it."""
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        decoder_inputs = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
        decoder_batch, decoder_length = decoder_inputs.shape[:2]
        if labels.shape[0] != decoder_batch:
            raise ValueError(f"labels has batch size {labels.shape[0]} but the decoder inputs have {decoder_batch}.")
        if self.training and decoder_attention_mask is None and labels.shape[1] == decoder_length:
            decoder_attention_mask = trailing_label_padding(labels)
        return decoder_input_ids, decoder_attention_mask

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
        encoder_outputs=None, cache: Cache | None = None, inputs_embeds=None, decoder_inputs_embeds=None,
        decoder_position_ids=None, labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch=None, skip_logits=None, **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:  # fmt: skip
        """`labels`: the target tokens (-100 ignored); the decoder inputs are built from them when not given."""
        self.check_labels(labels)
        if labels is not None:
            use_cache = False
            decoder_input_ids, decoder_attention_mask = self.decoder_inputs_from_labels(
                labels, decoder_input_ids, decoder_inputs_embeds, decoder_attention_mask
            )
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, cache=cache,
            inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds,
            decoder_position_ids=decoder_position_ids, use_cache=use_cache, **kwargs,
        )  # fmt: skip
        logits, loss = self.logits_and_loss(
            outputs.last_hidden_state, labels, num_items_in_batch, skip_logits, logits_to_keep
        )
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions, cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states, encoder_attentions=outputs.encoder_attentions,
        )  # fmt: skip


class VaswaniForMaskedLM(VaswaniLMHeadMixin, VaswaniPreTrainedModel):
    """The encoder alone with the pre-softmax projection: BERT-style masked-language-model pretraining."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=False, is_decoder=False))
        self.model = VaswaniModel(self.config)
        self.build_lm_head()
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, num_items_in_batch=None,
        skip_logits=None, **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:  # fmt: skip
        """`labels`: the original ids at the masked positions and -100 elsewhere."""
        self.check_labels(labels, input_ids=input_ids, inputs_embeds=inputs_embeds)
        outputs = self.model.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        logits, loss = self.logits_and_loss(outputs.last_hidden_state, labels, num_items_in_batch, skip_logits)
        return MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


class VaswaniForCausalLM(VaswaniLMHeadMixin, VaswaniPreTrainedModel, GenerationMixin):
    """The decoder alone (no cross-attention) with the pre-softmax projection: GPT-style language modelling."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=False, is_decoder=True))
        self.model = VaswaniModel(self.config)
        self.build_lm_head()
        self.post_init()

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
        inputs_embeds=None, labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch=None, skip_logits=None, shift_labels=None, **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithCrossAttentions:  # fmt: skip
        """`labels` align with `input_ids` (usually equal to them); the head shifts them to predict the next token.
        `shift_labels`, targets shifted already (context-parallel training shifts before it shards the sequence,
        as transformers' `ForCausalLMLoss` expects), replace `labels` when given."""
        self.check_labels(labels, input_ids=input_ids, inputs_embeds=inputs_embeds)
        self.check_labels(shift_labels, "shift_labels")
        outputs = self.model.decoder(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, inputs_embeds=inputs_embeds,
            position_ids=position_ids, use_cache=use_cache, **kwargs,
        )  # fmt: skip
        if shift_labels is None and labels is not None:  # position i predicts token i + 1; the last, nothing
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        logits, loss = self.logits_and_loss(
            outputs.last_hidden_state, shift_labels, num_items_in_batch, skip_logits, logits_to_keep
        )
        return CausalLMOutputWithCrossAttentions(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )  # fmt: skip


class VaswaniClassificationHead(nn.Module):
    """Sentence classifier on the mean of the encoder outputs over the real (unpadded) tokens."""

    def __init__(self, config: VaswaniConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout
        self.out_proj = nn.Linear(config.d_model, config.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # (batch, seq, 1)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        pooled = torch.tanh(self.dense(F.dropout(pooled, p=self.dropout, training=self.training)))
        return self.out_proj(F.dropout(pooled, p=self.dropout, training=self.training))


class VaswaniForSequenceClassification(VaswaniPreTrainedModel):
    """The encoder alone with a classifier on its pooled output: fine-tuning for sentence (pair) tasks."""

    # Its loss is a mean over sequences, not a token sum: Trainer must divide it by the accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=False, is_decoder=False))
        self.model = VaswaniModel(self.config)
        self.classifier = VaswaniClassificationHead(self.config)
        self.post_init()

    @can_return_tuple
    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, **kwargs: Unpack[TransformersKwargs]
    ) -> SequenceClassifierOutput:
        """`labels`: class ids, floats for regression (`num_labels=1`), or multi-hot floats for multi-label."""
        kwargs.pop("num_items_in_batch", None)  # a token count: meaningless with one label per sequence
        outputs = self.model.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )
        logits = self.classifier(outputs.last_hidden_state, attention_mask)
        loss = None
        if labels is not None:  # regression, single- or multi-label, chosen as transformers' classifiers choose it
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "VaswaniPreTrainedModel", "VaswaniModel", "VaswaniForConditionalGeneration", "VaswaniForMaskedLM",
    "VaswaniForCausalLM", "VaswaniForSequenceClassification",
]  # fmt: skip
