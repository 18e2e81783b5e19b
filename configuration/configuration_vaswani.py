"""Configuration of the Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

The defaults are the paper's base model (§3, §5.4, Table 3); `VaswaniConfig.big()` is the big model.
`VaswaniConfig.base()` is the default config plus the paper's training recipe, label smoothing 0.1.
Field names follow BART so that transformers users find what they expect; `hidden_size`,
`num_attention_heads` and `num_hidden_layers` are aliases (`attribute_map`).

| paper (Table 3)          | field                                              | base  | big   |
|--------------------------|----------------------------------------------------|-------|-------|
| N                        | `encoder_layers`, `decoder_layers`                 | 6     | 6     |
| d_model                  | `d_model`                                          | 512   | 1024  |
| d_ff                     | `encoder_ffn_dim`, `decoder_ffn_dim`               | 2048  | 4096  |
| h                        | `encoder_attention_heads`, `decoder_attention_heads` | 8   | 16    |
| d_k = d_v = d_model / h  | derived                                            | 64    | 64    |
| P_drop (§5.4)            | `dropout`                                          | 0.1   | 0.3   |
| eps_ls (§5.4)            | `label_smoothing` (class default 0.0, see below)   | 0.1   | 0.1   |
| shared BPE vocabulary (§5.1) | `vocab_size`                                   | 37000 | 37000 |

The paper's other choices are defaults too: post-LN residual blocks (§3.1), sinusoidal positions (§3.5),
embeddings scaled by sqrt(d_model) and one matrix shared by the source embedding, the target embedding
and the pre-softmax projection (§3.4), ReLU feed-forward (§3.3). The options users need for other work
are `layer_norm_position="pre"` (deep stacks), `position_embedding_type="learned"`,
`activation_function="gelu"`/`"silu"` and `tie_word_embeddings=False` (an output projection of its own;
source and target always share the embedding, as they share one vocabulary).

Label smoothing is a training choice, not part of the model: like every transformers model, `loss` is plain
cross-entropy unless asked otherwise, so `label_smoothing` defaults to 0.0 and users can compare losses across
models. The paper's 0.1 comes with the recipe: `vaswani-train` applies it in its own loss (its exported configs
say 0.0), `Trainer` with `label_smoothing_factor=0.1`; the presets `base()` and `big()` set it here for a loop that
uses the model's own loss. When set, the model smooths in training mode only.

The same config serves every view of the model; two flags say which stacks a view builds:
`is_encoder_decoder=True` (both, the default), `is_decoder=True` (decoder only, causal LM), neither
(encoder only, masked LM and classification). The model classes set these flags themselves.
"""

import copy

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


ACTIVATIONS = ("relu", "gelu", "silu")
POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned")
LAYER_NORM_POSITIONS = ("post", "pre")
# The ids the model itself reads. `mask_token_id` is only the tokenizer's, for data collators: like transformers,
# out of the vocabulary it gets a warning, so that a vocabulary resized below it can still be saved.
MODEL_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")

# §5.4: the training recipe of both presets; the class default is plain cross-entropy.
PAPER_LABEL_SMOOTHING = 0.1
# Table 3, "big": everything else as in the base model.
BIG_MODEL = {
    "d_model": 1024,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "dropout": 0.3,
}


@strict
class VaswaniConfig(PreTrainedConfig):
    """Configuration of every Vaswani view; the defaults are the paper's base model (Table 3)."""

    model_type = "vaswani"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }
    # Parallel plans (`DistributedConfig(tp_size=..., fsdp_size=...)`). Each stack is a model of its own on this one
    # config, so a `base_model_tp_plan` would be applied to both stacks and to VaswaniModel alike, naming modules that
    # two of the three lack (transformers warns at every load). The plans are therefore class attributes, kept here:
    # `stack_tp_plan` is each stack's `_tp_plan`, `cross_attention_tp_plan` part of the translation model's (only it
    # has cross-attention); `model.shared` and `lm_head` (vocabulary-parallel, the logits gathered) are in the model
    # classes' plans, and transformers adds each stack's `embed_tokens`, tied to `model.shared`.
    # Feed-forward: column-, then row-parallel (Megatron). Cross-attention is head-parallel: `q_proj` column-wise and
    # `kv_proj`, [k; v] stacked on its output, `packed_colwise`, which gives each process the same heads of k and of v
    # (a plain column split would give the first process all of k and none of v). The fused self-attention
    # `qkv_proj`, [q; k; v], has no three-way packed style in transformers: it is gathered, and `out_proj` splits its
    # replicated input, as transformers does for Phi-3's fused qkv_proj.
    stack_tp_plan = {
        "layers.*.self_attn.qkv_proj": "colwise_gather_output",
        "layers.*.self_attn.out_proj": "rowwise_split_input",
        "layers.*.feed_forward.fc1": "colwise",
        "layers.*.feed_forward.fc2": "rowwise",
    }
    cross_attention_tp_plan = {
        "model.decoder.layers.*.cross_attn.q_proj": "colwise",
        "model.decoder.layers.*.cross_attn.kv_proj": "packed_colwise",
        "model.decoder.layers.*.cross_attn.out_proj": "rowwise",
    }
    base_model_tp_plan = {}  # empty, not None: the model has plans (transformers' common tests then check them)
    # FSDP2: one unit per layer (each stack's `_fsdp_plan`). Not transformers' default, which names modules this model
    # lacks and wraps each stack's `embed_tokens`, putting the one shared matrix into two units.
    base_model_fsdp_plan = {}

    vocab_size: int = 37000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    label_smoothing: float = 0.0
    max_position_embeddings: int = 1024
    position_embedding_type: str = "sinusoidal"
    layer_norm_position: str = "post"
    scale_embedding: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1
    mask_token_id: int | None = 4
    is_encoder_decoder: bool = True
    is_decoder: bool = False

    @classmethod
    def base(cls, **overrides) -> "VaswaniConfig":
        """The paper's base model and its label smoothing (Table 3: 65M parameters with a 37000-token vocabulary)."""
        return cls(**{"label_smoothing": PAPER_LABEL_SMOOTHING, **overrides})

    @classmethod
    def big(cls, **overrides) -> "VaswaniConfig":
        """The paper's big model and its label smoothing (Table 3: 213M parameters with a 37000-token vocabulary)."""
        return cls(**{"label_smoothing": PAPER_LABEL_SMOOTHING, **BIG_MODEL, **overrides})

    @classmethod
    def from_tokenizer(cls, tokenizer, **overrides) -> "VaswaniConfig":
        """A config whose vocabulary size and special-token ids are those of `tokenizer`."""
        token_ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.bos_token_id,
            "mask_token_id": tokenizer.mask_token_id,
        }
        missing = [name for name in ("pad_token_id", "bos_token_id", "eos_token_id") if token_ids[name] is None]
        if missing:
            raise ValueError(
                f"The tokenizer defines no {', '.join(missing)}: train it with vaswani.train_tokenizer, "
                "which adds <pad>, <s>, </s>, <unk> and <mask>."
            )
        return cls(**{"vocab_size": len(tokenizer), **token_ids, **overrides})

    def check_tokenizer(self, tokenizer) -> None:
        """Raise a ValueError naming each disagreement between this config and `tokenizer`."""
        problems = []
        if len(tokenizer) > self.vocab_size:
            problems.append(f"the tokenizer has {len(tokenizer)} tokens but vocab_size is {self.vocab_size}")
        tokenizer_ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "mask_token_id": tokenizer.mask_token_id,
        }
        too_long = getattr(tokenizer, "model_max_length", 0) > self.max_position_embeddings
        if self.position_embedding_type == "learned" and too_long:
            problems.append(
                f"the tokenizer keeps {tokenizer.model_max_length} tokens but there are only "
                f"{self.max_position_embeddings} learned positions"
            )
        for name, tokenizer_id in tokenizer_ids.items():
            config_id = getattr(self, name)
            if tokenizer_id is not None and config_id is not None and tokenizer_id != config_id:
                problems.append(f"{name} is {config_id} in the config but {tokenizer_id} in the tokenizer")
        if problems:
            raise ValueError(
                "Model and tokenizer do not match: " + "; ".join(problems) + ". Build the config with "
                "VaswaniConfig.from_tokenizer(tokenizer) or load the tokenizer saved with the model."
            )

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """For `decoder=True`, a view whose `num_hidden_layers` and `num_attention_heads` describe the decoder.

        transformers sizes generation caches by `get_text_config(decoder=True).num_hidden_layers`, an alias of
        `encoder_layers`; it remaps flat encoder-decoder configs itself, and this does the same for the
        decoder-only (causal LM) view.
        """
        if decoder and not encoder and self.is_decoder and not self.is_encoder_decoder:
            view = copy.deepcopy(self)
            view.encoder_layers, view.encoder_attention_heads = self.decoder_layers, self.decoder_attention_heads
            return view
        return super().get_text_config(decoder=decoder, encoder=encoder)

    def validate_architecture(self):
        """Checked whenever a config is built (and by every model): each message names the field and the fix."""
        super().validate_architecture()
        for name in (
            "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(
                    f"d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)}): each head "
                    "attends in d_model / heads dimensions (§3.2.2). Change d_model or the number of heads."
                )
        if self.position_embedding_type == "sinusoidal" and self.d_model % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must be even for sinusoidal positions, which pair a sine and a cosine "
                "per frequency (§3.5). Use an even d_model or position_embedding_type='learned'."
            )
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        self._check_choice("activation_function", ACTIVATIONS)
        self._check_choice("position_embedding_type", POSITION_EMBEDDING_TYPES)
        self._check_choice("layer_norm_position", LAYER_NORM_POSITIONS)
        for name in MODEL_TOKEN_FIELDS:
            token_id = getattr(self, name)
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"{name} ({token_id}) is outside the vocabulary [0, {self.vocab_size}). Use an id below "
                    "vocab_size, or build the config with VaswaniConfig.from_tokenizer(tokenizer)."
                )

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            raise ValueError(f"Unknown {name} {getattr(self, name)!r}; choose one of {', '.join(choices)}.")


__all__ = ["VaswaniConfig"]
