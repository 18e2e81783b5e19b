"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model family.

Read top-down in the order of the paper's Figure 1:

| paper                                          | here                                                    |
|------------------------------------------------|---------------------------------------------------------|
| §3.5 positional encoding                       | `VaswaniSinusoidalPositions` (`VaswaniLearnedPositions`) |
| §3.4 embeddings, scaled by sqrt(d_model)       | `VaswaniScaledEmbedding`: one matrix, `model.shared`    |
| §3.2.1 scaled dot-product attention            | `eager_attention_forward`; sdpa/flex via transformers   |
| §3.2.2-3 multi-head attention in three roles   | `VaswaniAttention`                                      |
| §3.3 position-wise feed-forward network        | `VaswaniFeedForward`                                    |
| §3.1 residual + layer norm, §5.4 dropout       | `VaswaniResidualLayer`                                  |
| §3.1 encoder and decoder layers                | `VaswaniEncoderLayer`, `VaswaniDecoderLayer`            |
| §3.1 encoder and decoder stacks                | `VaswaniEncoder`, `VaswaniDecoder`                      |
| Figure 1                                       | `VaswaniModel`                                          |
| §3.4 pre-softmax projection, §5.4 label smoothing | `lm_head` of the LM views, `token_cross_entropy`     |

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
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    MaskedLMOutput,
    ModelOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg


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


def positions_from_mask(attention_mask: torch.Tensor | None, past_length: int, length: int, device) -> torch.Tensor:
    """Position of each new token counting only real tokens, so that left padding does not shift positions."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device).unsqueeze(0)  # (1, seq)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]  # (batch, seq)


def real_token_rows(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Flat indices (batch * seq) of the real tokens among the last `length` positions, or None without padding."""
    if attention_mask is None or attention_mask.dim() != 2 or is_torchdynamo_compiling():
        return None  # (compiled graphs keep static shapes: no data-dependent row count)
    new_tokens = attention_mask[:, -length:].bool()
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
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
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
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: Cache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`cache`: the self-attention cache for self-attention, the EncoderDecoderCache for cross."""
        if self.is_cross_attention:
            query, key, value = self.cross_attention_states(hidden_states, encoder_hidden_states, cache)
        else:
            query, key, value = self.self_attention_states(hidden_states, cache)
        implementation = self.config._attn_implementation
        if output_attentions and implementation == "sdpa":
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


class VaswaniResidualLayer(GradientCheckpointingLayer):
    """The residual block around each sub-layer, §3.1 and §5.4.

    Post-LN as in the paper: LayerNorm(x + Dropout(Sublayer(x))). Pre-LN for deep stacks:
    x + Dropout(Sublayer(LayerNorm(x))), and the stack ends with one more LayerNorm.
    """

    def __init__(self, config: VaswaniConfig):
        super().__init__()
        self.pre_norm = config.layer_norm_position == "pre"
        self.dropout = config.dropout

    def sublayer_input(self, norm: nn.LayerNorm, hidden_states: torch.Tensor) -> torch.Tensor:
        return norm(hidden_states) if self.pre_norm else hidden_states

    def add_residual(self, norm: nn.LayerNorm, residual: torch.Tensor, sublayer_output: torch.Tensor) -> torch.Tensor:
        hidden_states = residual + F.dropout(sublayer_output, p=self.dropout, training=self.training)
        return hidden_states if self.pre_norm else norm(hidden_states)

    def feed_forward_block(self, hidden_states: torch.Tensor, token_rows: torch.Tensor | None) -> torch.Tensor:
        """The feed-forward sublayer with its residual; with `token_rows` (flat indices of the real tokens of a
        padded batch), on those rows only. The network is position-wise and padding is never attended to, so the
        work on padding, often half of a batch of sentences, can be skipped; padded positions keep their input."""
        if token_rows is None:
            return self.feed_forward_residual(hidden_states)
        flat = hidden_states.flatten(0, 1)
        tokens = self.feed_forward_residual(flat.index_select(0, token_rows))
        return flat.index_copy(0, token_rows, tokens).view_as(hidden_states)

    def feed_forward_residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        transformed = self.feed_forward(self.sublayer_input(self.feed_forward_layer_norm, hidden_states))
        return self.add_residual(self.feed_forward_layer_norm, hidden_states, transformed)


class VaswaniEncoderLayer(VaswaniResidualLayer):
    """Encoder layer, §3.1: multi-head self-attention, then the feed-forward network."""

    def __init__(self, config: VaswaniConfig, layer_idx: int):
        super().__init__(config)
        self.self_attn = VaswaniAttention(config, layer_idx, role="encoder")
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.feed_forward = VaswaniFeedForward(config, is_decoder=False)
        self.feed_forward_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, token_rows=None, **kwargs):
        """Returns the new hidden states and the self-attention weights (None unless asked for)."""
        normed = self.sublayer_input(self.self_attn_layer_norm, hidden_states)
        attended, self_attention = self.self_attn(normed, attention_mask, **kwargs)
        hidden_states = self.add_residual(self.self_attn_layer_norm, hidden_states, attended)
        return self.feed_forward_block(hidden_states, token_rows), self_attention


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
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        token_rows: torch.Tensor | None = None,
        **kwargs,
    ):
        """Returns the new hidden states and the self- and cross-attention weights (None unless asked for)."""
        self_cache = cache
        if isinstance(cache, EncoderDecoderCache):
            self_cache = cache.self_attention_cache
        normed = self.sublayer_input(self.self_attn_layer_norm, hidden_states)
        attended, self_attention = self.self_attn(normed, attention_mask, cache=self_cache, **kwargs)
        hidden_states = self.add_residual(self.self_attn_layer_norm, hidden_states, attended)
        cross_attention = None
        if encoder_hidden_states is not None:
            normed = self.sublayer_input(self.cross_attn_layer_norm, hidden_states)
            attended, cross_attention = self.cross_attn(
                normed, encoder_attention_mask, encoder_hidden_states, cache=cache, **kwargs
            )
            hidden_states = self.add_residual(self.cross_attn_layer_norm, hidden_states, attended)
        return self.feed_forward_block(hidden_states, token_rows), self_attention, cross_attention


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

    def check_inputs(self, input_ids, attention_mask=None, name: str | None = None) -> None:
        """Ids outside the vocabulary and masks of another batch size fail here, with names, not deep inside."""
        if input_ids is None:
            return
        name = name or "input_ids"
        check_token_ids(input_ids, self.config.vocab_size, name)
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{name} has batch size {input_ids.shape[0]} but its attention mask has {attention_mask.shape[0]}."
            )

    def check_labels(self, labels: torch.Tensor | None) -> None:
        if labels is not None:
            check_token_ids(labels.masked_fill(labels == -100, 0), self.config.vocab_size, "labels")

    def wants_dict(self, return_dict: bool | None) -> bool:
        return self.config.return_dict if return_dict is None else return_dict


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
    N identical layers and, with pre-LN, a final layer norm."""

    layer_class: type[VaswaniResidualLayer]
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

    def run_layers(self, hidden_states, *layer_args, output_attentions=None, output_hidden_states=None, **layer_kwargs):
        """Runs every layer; returns the output, the hidden states after each step (with the input) if asked for,
        and for each kind of attention (self, cross) the tuple of per-layer weights if asked for."""
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        all_hidden_states, all_attentions = [hidden_states], []
        for layer in self.layers:
            hidden_states, *attentions = layer(
                hidden_states, *layer_args, output_attentions=output_attentions, **layer_kwargs
            )
            all_hidden_states.append(hidden_states)
            all_attentions.append(attentions)
        if hasattr(self, "layer_norm"):
            hidden_states = all_hidden_states[-1] = self.layer_norm(hidden_states)
        attentions_by_kind = [tuple(kind) if kind[0] is not None else None for kind in zip(*all_attentions)]
        return (
            hidden_states,
            tuple(all_hidden_states) if output_hidden_states else None,
            attentions_by_kind if output_attentions else [None] * len(attentions_by_kind),
        )


class VaswaniEncoder(VaswaniStack):
    """Encoder stack, §3.1: N layers of self-attention and feed-forward over the source."""

    layer_class = VaswaniEncoderLayer
    num_layers_field = "encoder_layers"

    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=None,
        output_hidden_states=None, return_dict=None, **kwargs,
    ) -> BaseModelOutput | tuple:  # fmt: skip
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds to the encoder.")
        self.check_inputs(input_ids, attention_mask)
        tokens = input_ids if input_ids is not None else inputs_embeds
        self.embed_positions.check_length(tokens.shape[1])
        positions = positions_from_mask(attention_mask, 0, tokens.shape[1], tokens.device)
        inputs_embeds, hidden_states = self.embed(input_ids, inputs_embeds, positions)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        hidden_states, all_hidden_states, (attentions,) = self.run_layers(
            hidden_states, mask, token_rows=real_token_rows(attention_mask, tokens.shape[1]),
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, **kwargs,
        )  # fmt: skip
        output = BaseModelOutput(hidden_states, all_hidden_states, attentions)
        return output if self.wants_dict(return_dict) else output.to_tuple()


class VaswaniDecoder(VaswaniStack):
    """Decoder stack, §3.1: N layers whose self-attention is masked so that position i sees only positions <= i."""

    layer_class = VaswaniDecoderLayer
    num_layers_field = "decoder_layers"

    def check_encoder_states(self, encoder_hidden_states: torch.Tensor | None, batch_size: int) -> None:
        if self.config.is_encoder_decoder and encoder_hidden_states is None:
            raise ValueError("The decoder of the encoder-decoder model needs encoder_hidden_states to attend to.")
        if not self.config.is_encoder_decoder and encoder_hidden_states is not None:
            raise ValueError("The decoder-only view has no cross-attention: do not pass encoder_hidden_states.")
        if encoder_hidden_states is not None and encoder_hidden_states.shape[0] != batch_size:
            raise ValueError(
                f"The decoder input has batch size {batch_size} but the encoder output has "
                f"{encoder_hidden_states.shape[0]}."
            )

    def prepare_cache(self, cache: Cache | None, use_cache: bool) -> tuple[Cache | None, Cache | None]:
        """The cache to pass to the layers and its self-attention part (an EncoderDecoderCache holds both)."""
        if use_cache and cache is None:
            cache = DynamicCache()
            if self.config.is_encoder_decoder:
                cache = EncoderDecoderCache(cache, DynamicCache())
        if isinstance(cache, EncoderDecoderCache):
            return cache, cache.self_attention_cache
        return cache, cache

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    def forward(
        self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
        cache: Cache | None = None, inputs_embeds=None, position_ids=None, use_cache=None,
        output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:  # fmt: skip
        """`attention_mask` covers the cached tokens and the new ones; positions follow it (left padding)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds to the decoder.")
        self.check_inputs(input_ids, attention_mask, "decoder_input_ids" if self.config.is_encoder_decoder else None)
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch_size, length = tokens.shape[:2]
        self.check_encoder_states(encoder_hidden_states, batch_size)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        cache, self_cache = self.prepare_cache(cache, use_cache)
        past_length = self_cache.get_seq_length() if self_cache is not None else 0
        self.embed_positions.check_length(past_length + length)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past_length, length, tokens.device)
        elif position_ids.numel():
            self.embed_positions.check_length(int(position_ids.max()) + 1)
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
        hidden_states, all_hidden_states, (self_attentions, cross_attentions) = self.run_layers(
            hidden_states, self_mask, encoder_hidden_states, cross_mask, cache=cache,
            token_rows=real_token_rows(attention_mask, length),
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, **kwargs,
        )  # fmt: skip
        output = BaseModelOutputWithPastAndCrossAttentions(
            hidden_states, cache if use_cache else None, all_hidden_states, self_attentions, cross_attentions
        )
        return output if self.wants_dict(return_dict) else output.to_tuple()


# ----------------------------------------------------------------------------------------------- model


class VaswaniModel(VaswaniPreTrainedModel):
    """The Transformer of Figure 1 without a head: encoder and decoder stacks over one shared embedding (§3.4).

    Which stacks exist follows the config: both for `is_encoder_decoder=True`, the decoder alone for
    `is_decoder=True` (causal LM), the encoder alone otherwise (masked LM, classification).
    """

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
    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
        encoder_outputs=None, cache: Cache | None = None, inputs_embeds=None, decoder_inputs_embeds=None,
        decoder_position_ids=None, use_cache=None, output_attentions=None, output_hidden_states=None,
        return_dict=None, **kwargs,
    ) -> Seq2SeqModelOutput | BaseModelOutput | BaseModelOutputWithPastAndCrossAttentions | tuple:  # fmt: skip
        """Runs the stacks of this view; the encoder-decoder returns a `Seq2SeqModelOutput`.

        A single-stack view reads its input from `input_ids` (and `attention_mask`, `cache`, ...).
        """
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        if not hasattr(self, "encoder"):
            return self.decoder(
                input_ids, attention_mask, cache=cache, inputs_embeds=inputs_embeds,
                use_cache=use_cache, return_dict=return_dict, **flags, **kwargs,
            )  # fmt: skip
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask, inputs_embeds, return_dict=True, **flags, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if not hasattr(self, "decoder"):
            return encoder_outputs if self.wants_dict(return_dict) else encoder_outputs.to_tuple()

        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "The encoder-decoder needs decoder_input_ids (or labels, from which VaswaniForConditionalGeneration "
                "builds them by shifting right)."
            )
        decoder_outputs = self.decoder(
            decoder_input_ids, decoder_attention_mask, encoder_outputs.last_hidden_state, attention_mask,
            cache=cache, inputs_embeds=decoder_inputs_embeds, position_ids=decoder_position_ids,
            use_cache=use_cache, return_dict=True, **flags, **kwargs,
        )  # fmt: skip
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if self.wants_dict(return_dict) else output.to_tuple()


# ----------------------------------------------------------------------------------------------- heads


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels (teacher forcing): prepend the start token, drop the last, -100 -> pad."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def token_cross_entropy(logits, labels, label_smoothing: float = 0.0, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy over the labelled tokens (-100 is ignored), with label smoothing (§5.4).

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


def head_output(output_class: type[ModelOutput], base_output: ModelOutput, return_dict: bool, **head_fields):
    """A head's loss and logits with everything else its base output holds (the field names are the same)."""
    fields = {name: value for name, value in base_output.items() if name != "last_hidden_state"}
    output = output_class(**head_fields, **fields)
    return output if return_dict else output.to_tuple()


class VaswaniLMHeadMixin:
    """The pre-softmax projection, §3.4: `lm_head`, tied to `model.shared` unless `tie_word_embeddings=False`."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def build_lm_head(self) -> None:
        self.lm_head = nn.Linear(self.config.d_model, self.config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, projection: nn.Linear) -> None:
        self.lm_head = projection

    def logits_and_loss(self, hidden_states, labels=None, num_items_in_batch=None, skip_logits=None, logits_to_keep=0):
        """Logits and, with labels, the loss. Label smoothing (§5.4) regularises training only, so that evaluation
        losses stay true perplexities.

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

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=True, is_decoder=False))
        self.model = VaswaniModel(self.config)
        self.build_lm_head()
        self.post_init()

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    def forward(
        self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
        encoder_outputs=None, cache: Cache | None = None, inputs_embeds=None, decoder_inputs_embeds=None,
        decoder_position_ids=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
        return_dict=None, logits_to_keep: int | torch.Tensor = 0, num_items_in_batch=None, skip_logits=None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:  # fmt: skip
        """`labels`: the target tokens (-100 ignored); the decoder inputs are built from them when not given."""
        self.check_labels(labels)
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            decoder_batch, decoder_length = (
                decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
            ).shape[:2]
            if labels.shape[0] != decoder_batch:
                raise ValueError(f"labels has batch size {labels.shape[0]} but the decoder inputs have {decoder_batch}.")
            if self.training and decoder_attention_mask is None and labels.shape[1] == decoder_length:
                decoder_attention_mask = trailing_label_padding(labels)  # the decoder then skips that padding
        outputs = self.model(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs, cache,
            inputs_embeds, decoder_inputs_embeds, decoder_position_ids, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )  # fmt: skip
        logits, loss = self.logits_and_loss(
            outputs.last_hidden_state, labels, num_items_in_batch, skip_logits, logits_to_keep
        )
        return head_output(Seq2SeqLMOutput, outputs, self.wants_dict(return_dict), loss=loss, logits=logits)


class VaswaniForMaskedLM(VaswaniLMHeadMixin, VaswaniPreTrainedModel):
    """The encoder alone with the pre-softmax projection: BERT-style masked-language-model pretraining."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=False, is_decoder=False))
        self.model = VaswaniModel(self.config)
        self.build_lm_head()
        self.post_init()

    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, output_attentions=None,
        output_hidden_states=None, return_dict=None, num_items_in_batch=None, skip_logits=None, **kwargs,
    ) -> MaskedLMOutput | tuple:  # fmt: skip
        """`labels`: the original ids at the masked positions and -100 elsewhere."""
        self.check_labels(labels)
        outputs = self.model.encoder(
            input_ids, attention_mask, inputs_embeds, output_attentions, output_hidden_states, True, **kwargs
        )
        logits, loss = self.logits_and_loss(outputs.last_hidden_state, labels, num_items_in_batch, skip_logits)
        return head_output(MaskedLMOutput, outputs, self.wants_dict(return_dict), loss=loss, logits=logits)


class VaswaniForCausalLM(VaswaniLMHeadMixin, VaswaniPreTrainedModel, GenerationMixin):
    """The decoder alone (no cross-attention) with the pre-softmax projection: GPT-style language modelling."""

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=False, is_decoder=True))
        self.model = VaswaniModel(self.config)
        self.build_lm_head()
        self.post_init()

    @deprecate_kwarg("past_key_values", version="5.40.0", new_name="cache")  # transformers 5.24 renamed it
    def forward(
        self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
        inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
        return_dict=None, logits_to_keep: int | torch.Tensor = 0, num_items_in_batch=None, skip_logits=None,
        shift_labels=None, **kwargs,
    ) -> CausalLMOutputWithCrossAttentions | tuple:  # fmt: skip
        """`labels` align with `input_ids` (usually equal to them); the head shifts them to predict the next token.
        `shift_labels`, targets shifted already (context-parallel training shifts before it shards the sequence,
        as transformers' `ForCausalLMLoss` expects), replace `labels` when given."""
        self.check_labels(labels)
        self.check_labels(shift_labels)
        if labels is not None and input_ids is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)} but input_ids {tuple(input_ids.shape)}.")
        outputs = self.model.decoder(
            input_ids, attention_mask, cache=cache, inputs_embeds=inputs_embeds,
            position_ids=position_ids, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )  # fmt: skip
        if shift_labels is None and labels is not None:  # position i predicts token i + 1; the last, nothing
            shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
        logits, loss = self.logits_and_loss(
            outputs.last_hidden_state, shift_labels, num_items_in_batch, skip_logits, logits_to_keep
        )
        return_dict = self.wants_dict(return_dict)
        return head_output(CausalLMOutputWithCrossAttentions, outputs, return_dict, loss=loss, logits=logits)


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


def classification_loss(config: VaswaniConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Regression, single-label or multi-label loss, chosen as transformers' classifiers choose it."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float().view(logits.shape[:-1]))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class VaswaniForSequenceClassification(VaswaniPreTrainedModel):
    """The encoder alone with a classifier on its pooled output: fine-tuning for sentence (pair) tasks."""

    # Its loss is a mean over sequences, not a token sum: Trainer must divide it by the accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: VaswaniConfig):
        super().__init__(view_config(config, is_encoder_decoder=False, is_decoder=False))
        self.model = VaswaniModel(self.config)
        self.classifier = VaswaniClassificationHead(self.config)
        self.post_init()

    def forward(
        self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, output_attentions=None,
        output_hidden_states=None, return_dict=None, **kwargs,
    ) -> SequenceClassifierOutput | tuple:  # fmt: skip
        """`labels`: class ids, floats for regression (`num_labels=1`), or multi-hot floats for multi-label."""
        kwargs.pop("num_items_in_batch", None)  # a token count: meaningless with one label per sequence
        outputs = self.model.encoder(
            input_ids, attention_mask, inputs_embeds, output_attentions, output_hidden_states, True, **kwargs
        )
        logits = self.classifier(outputs.last_hidden_state, attention_mask)
        loss = classification_loss(self.config, logits, labels) if labels is not None else None
        return head_output(SequenceClassifierOutput, outputs, self.wants_dict(return_dict), loss=loss, logits=logits)


__all__ = [
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniForMaskedLM",
    "VaswaniForCausalLM",
    "VaswaniForSequenceClassification",
]
