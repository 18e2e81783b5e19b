"""Export a saved Vaswani model to CTranslate2, the C++ inference engine that translation deployments run.

The export goes through CTranslate2's own converter framework: `VaswaniLoader` maps our modules onto CTranslate2's
Transformer specifications and `TransformersConverter` writes the model, quantizing it on the way (int8, float16,
...). Each view of the model becomes the CTranslate2 model that serves it:

| view (config flags)                          | CTranslate2 spec             | run it with                        |
|----------------------------------------------|------------------------------|------------------------------------|
| seq2seq (`is_encoder_decoder`)               | `TransformerSpec`            | `ctranslate2.Translator`           |
| causal LM (`is_decoder`)                     | `TransformerDecoderModelSpec` | `ctranslate2.Generator`           |
| encoder (masked LM, classification, neither) | `TransformerEncoderModelSpec` | `ctranslate2.Encoder` (hidden states) |

The encoder view yields the encoder's last hidden states only: CTranslate2's encoder spec has BERT's pooler
(first token, dense, tanh) but neither a masked-LM head nor our mean-pooling classifier, so those heads stay in
PyTorch.

What the mapping has to get right, each a way an export can silently translate worse:
- positions: CTranslate2's built-in sinusoid concatenates all sines, then all cosines; §3.5 (and this model)
  interleaves them. The model's own table is exported, extended to 4096 positions (sinusoids extend to any
  length; learned positions cannot, so their table is exported as it is).
- fused projections: `qkv_proj` stacks the query, key and value matrices on the output axis, and the cross-
  attention `kv_proj` the key and value matrices: exactly CTranslate2's fused layouts, so they are copied as they
  are. The projections have no biases; CTranslate2's biases are optional, so none are invented.
- embeddings: scaled by sqrt(d_model) (§3.4); one matrix for source, target and the pre-softmax projection, which
  CTranslate2 stores once (it aliases equal tensors), or an untied `lm_head` of its own.
- post-LN (§3.1) or pre-LN with a final layer norm per stack; LayerNorm's epsilon is written into the model.

The tokenizer's files are copied next to the CTranslate2 model, so that the exported folder alone can translate
(`vaswani-translate --model OUTPUT_DIR --backend ctranslate2`). From the command line:

    vaswani-export-ctranslate2 MODEL_DIR OUTPUT_DIR [--quantization int8] [--force]
"""

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig

from vaswani.configuration import VaswaniConfig
from vaswani.configuration.files import weights_problem
from vaswani.modeling.modeling_vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniModel,
    VaswaniSinusoidalPositions,
)

try:
    import ctranslate2
    from ctranslate2.converters.transformers import ModelLoader, TransformersConverter, register_loader
    from ctranslate2.specs import common_spec, transformer_spec
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES
except ImportError:  # an optional extra: this module still imports, so that using it can say what to install
    ctranslate2 = None
    ModelLoader = object

INSTALL_HINT = 'CTranslate2 is not installed: pip install "vaswani[ctranslate2]" (or pip install ctranslate2).'
# Long enough for any sentence CTranslate2 translates by default (inputs up to 1024 tokens, outputs up to 256) and
# for long generations; 4096 x d_model float32 values, 8 MiB for the base model, stored once for both stacks.
EXPORTED_POSITIONS = 4096
# The files that make the tokenizer: transformers 5 saves tokenizer.json and tokenizer_config.json; older saves
# and other tokenizers may add the rest.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "vocab.txt", "chat_template.jinja",
)  # fmt: skip
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "silu": "SWISH"}


def require_ctranslate2() -> None:
    if ctranslate2 is None:
        raise ImportError(INSTALL_HINT)


def model_view(config: VaswaniConfig) -> str:
    """"seq2seq", "causal_lm" or "encoder": the view a checkpoint was saved from, read off its config flags."""
    if config.is_encoder_decoder:
        return "seq2seq"
    return "causal_lm" if config.is_decoder else "encoder"


def stacks(model) -> list:
    """The encoder and/or decoder stacks of a loaded view."""
    base = model.model if hasattr(model, "lm_head") else model
    return [stack for stack in (getattr(base, "encoder", None), getattr(base, "decoder", None)) if stack is not None]


# The model class each view is loaded with: the encoder view loads any encoder-only checkpoint (masked LM,
# classification) into the bare encoder, dropping the head that CTranslate2 cannot run.
VIEW_CLASSES = {"seq2seq": VaswaniForConditionalGeneration, "causal_lm": VaswaniForCausalLM, "encoder": VaswaniModel}


class VaswaniLoader(ModelLoader):
    """Maps a Vaswani model onto CTranslate2's Transformer specifications (see the module docstring)."""

    # TransformersConverter looks this name up in `transformers` before asking `get_model_class` for the real one.
    architecture_name = "AutoModel"

    def get_model_class(self, config: VaswaniConfig, default_class):
        return VIEW_CLASSES[model_view(config)]

    def get_model_spec(self, model):
        config = model.config
        view = model_view(config)
        if view == "seq2seq":
            encoder, decoder = self.stack_spec(config, "encoder"), self.stack_spec(config, "decoder")
            spec = transformer_spec.TransformerSpec(encoder, decoder)
            self.set_encoder(spec.encoder, model.model.encoder)
            self.set_decoder(spec.decoder, model.model.decoder, model.lm_head)
        elif view == "causal_lm":
            spec = transformer_spec.TransformerDecoderModelSpec(self.stack_spec(config, "decoder"))
            self.set_decoder(spec.decoder, model.model.decoder, model.lm_head)
        else:
            spec = transformer_spec.TransformerEncoderModelSpec(self.stack_spec(config, "encoder"))
            self.set_encoder(spec.encoder, model.encoder)
        return spec

    @staticmethod
    def stack_spec(config: VaswaniConfig, stack: str):
        """The spec of one stack; built here rather than by `TransformerSpec.from_config`, which gives both stacks
        one head count, while ours may differ."""
        common = {
            "num_layers": getattr(config, f"{stack}_layers"),
            "num_heads": getattr(config, f"{stack}_attention_heads"),
            "pre_norm": config.layer_norm_position == "pre",
            "activation": getattr(common_spec.Activation, ACTIVATIONS[config.activation_function]),
        }
        if stack == "encoder":
            return transformer_spec.TransformerEncoderSpec(**common)
        return transformer_spec.TransformerDecoderSpec(**common, with_encoder_attention=config.is_encoder_decoder)

    def set_config(self, config, model, tokenizer):
        config.bos_token = tokenizer.bos_token
        config.eos_token = tokenizer.eos_token
        config.unk_token = tokenizer.unk_token
        config.layer_norm_epsilon = next(m.eps for m in model.modules() if isinstance(m, nn.LayerNorm))
        # Not read by CTranslate2 (it stops with an error past the last position); read by vaswani-translate, which
        # caps input and output lengths so that they fit.
        positions = min(len(self.position_table(stack.embed_positions)) for stack in stacks(model))
        config.add_attribute("max_positions", positions)
        if model.config.is_encoder_decoder:
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

    def get_vocabulary(self, model, tokenizer) -> list[str]:
        """One token per embedding row, in id order. Rows the tokenizer has no token for (an embedding resized
        past it, e.g. to a multiple of 8) get placeholder names, so that every id keeps its row."""
        tokens = [None] * model.config.vocab_size
        for token, token_id in tokenizer.get_vocab().items():
            if token_id >= len(tokens):
                raise ValueError(
                    f"The tokenizer has token {token!r} with id {token_id} but the model's vocab_size is "
                    f"{len(tokens)}: export a model and the tokenizer it was trained with."
                )
            tokens[token_id] = token
        taken = set(tokens)
        for token_id, token in enumerate(tokens):
            if token is None:
                tokens[token_id] = placeholder = f"<unused_{token_id}>"
                if placeholder in taken:
                    raise ValueError(f"The tokenizer has no id {token_id} but holds the token {placeholder!r}.")
        return tokens

    def set_vocabulary(self, spec, tokens):
        if isinstance(spec, transformer_spec.TransformerSpec):
            spec.register_source_vocabulary(tokens)
            spec.register_target_vocabulary(tokens)
        else:
            spec.register_vocabulary(tokens)

    def set_stack(self, spec, stack) -> None:
        """What both stacks share: scaled embeddings, the position table and, with pre-LN, the final layer norm."""
        spec.scale_embeddings = stack.embed_tokens.embed_scale
        embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings  # encoder: a list
        self.set_embeddings(embeddings, stack.embed_tokens)
        spec.position_encodings.encodings = self.position_table(stack.embed_positions)
        if hasattr(stack, "layer_norm"):
            self.set_layer_norm(spec.layer_norm, stack.layer_norm)

    @staticmethod
    def position_table(positions: nn.Module) -> torch.Tensor:
        """Our positional encodings as a (positions, d_model) table, sinusoids extended to `EXPORTED_POSITIONS`."""
        if isinstance(positions, VaswaniSinusoidalPositions):
            return positions.sinusoids(max(EXPORTED_POSITIONS, positions.table.shape[0]), positions.d_model)
        return positions.weight

    def set_encoder(self, spec, encoder) -> None:
        self.set_stack(spec, encoder)
        for layer_spec, layer in zip(spec.layer, encoder.layers, strict=True):
            self.set_self_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_layer_norm)
            self.set_feed_forward(layer_spec.ffn, layer)

    def set_decoder(self, spec, decoder, lm_head: nn.Linear) -> None:
        self.set_stack(spec, decoder)
        for layer_spec, layer in zip(spec.layer, decoder.layers, strict=True):
            self.set_self_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_layer_norm)
            if hasattr(layer, "cross_attn"):
                # CTranslate2's cross-attention: linear[0] queries, linear[1] keys and values fused, linear[2] out.
                self.set_linear(layer_spec.attention.linear[0], layer.cross_attn.q_proj)
                self.set_linear(layer_spec.attention.linear[1], layer.cross_attn.kv_proj)
                self.set_linear(layer_spec.attention.linear[2], layer.cross_attn.out_proj)
                self.set_layer_norm(layer_spec.attention.layer_norm, layer.cross_attn_layer_norm)
            self.set_feed_forward(layer_spec.ffn, layer)
        self.set_linear(spec.projection, lm_head)

    def set_self_attention(self, spec, attention, layer_norm: nn.LayerNorm) -> None:
        # CTranslate2's self-attention: linear[0] is [queries; keys; values] on the output axis, as `qkv_proj` is.
        self.set_linear(spec.linear[0], attention.qkv_proj)
        self.set_linear(spec.linear[1], attention.out_proj)
        self.set_layer_norm(spec.layer_norm, layer_norm)

    def set_feed_forward(self, spec, layer) -> None:
        self.set_linear(spec.linear_0, layer.feed_forward.fc1)
        self.set_linear(spec.linear_1, layer.feed_forward.fc2)
        self.set_layer_norm(spec.layer_norm, layer.feed_forward_layer_norm)



if ctranslate2 is not None:
    # CTranslate2's extension point: from now on its TransformersConverter converts any saved Vaswani model.
    register_loader(VaswaniConfig.__name__)(VaswaniLoader)


def export_ctranslate2(
    model_dir: str | Path, output_dir: str | Path, quantization: str | None = None, force: bool = False
) -> str:
    """Convert the model saved in `model_dir` (a folder or a Hub model id) into a CTranslate2 model in `output_dir`.

    `quantization`: None keeps the saved dtype; "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
    "float16", "bfloat16" or "float32" convert the weights (CTranslate2 can also quantize on load, with
    `compute_type=`). `force` replaces an existing `output_dir`. Returns the output folder.
    """
    require_ctranslate2()
    if quantization is not None and quantization not in ACCEPTED_MODEL_TYPES:
        raise ValueError(f"Unknown quantization {quantization!r}; choose one of {', '.join(ACCEPTED_MODEL_TYPES)}.")
    model_dir, output_dir = resolve_model_dir(model_dir), Path(output_dir)
    check_output_dir(model_dir, output_dir, force)
    config = AutoConfig.from_pretrained(model_dir)
    if not isinstance(config, VaswaniConfig):
        raise ValueError(
            f"{model_dir} holds a {config.model_type!r} model, not a Vaswani model; convert other transformers "
            "models with CTranslate2's own ct2-transformers-converter."
        )
    tokenizer_files = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not {"tokenizer.json", "tokenizer_config.json"} & set(tokenizer_files):
        raise ValueError(
            f"{model_dir} has no tokenizer, and CTranslate2 models take token strings from it: save the tokenizer "
            "with the model (tokenizer.save_pretrained(model_dir))."
        )
    converter = TransformersConverter(str(model_dir), copy_files=tokenizer_files)
    return converter.convert(str(output_dir), quantization=quantization, force=force)


def resolve_model_dir(name: str | Path) -> Path:
    """A local model folder as it is; otherwise the local snapshot of the Hub model `name`, downloaded if needed.
    A folder whose weights are only pickles, or damaged, is refused (`weights_problem`)."""
    path = Path(name)
    if path.is_dir():
        return checked_weights(path)
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; give the folder the model was saved to.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        snapshot = Path(snapshot_download(str(name)))
    except (HFValidationError, OSError) as error:  # bad id, unknown repository, offline without a cached copy
        raise FileNotFoundError(f"{name} is neither a model folder nor a model on the Hub ({error}).") from error
    return checked_weights(snapshot)


def checked_weights(folder: Path) -> Path:
    if (problem := weights_problem(folder)) is not None:
        raise ValueError(problem)
    return folder


def check_output_dir(model_dir: Path, output_dir: Path, force: bool) -> None:
    """CTranslate2 deletes an existing output folder when forced: never one that holds the model itself."""
    model_dir, resolved_output = model_dir.resolve(), output_dir.resolve()
    if resolved_output == model_dir or resolved_output in model_dir.parents:
        raise ValueError(f"The output folder {output_dir} holds the model being converted; choose another folder.")
    if output_dir.exists() and not force:
        raise FileExistsError(f"{output_dir} already exists; pass force=True (--force) to replace it.")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vaswani-export-ctranslate2",
        description="Convert a saved Vaswani model into a CTranslate2 model (translate it with vaswani-translate "
        "--backend ctranslate2, or with ctranslate2.Translator / Generator / Encoder).",
    )
    parser.add_argument("model_dir", help="A folder saved with save_pretrained (model and tokenizer), or a Hub id.")
    parser.add_argument("output_dir", help="The folder to write the CTranslate2 model to.")
    parser.add_argument(
        "--quantization", default=None, metavar="TYPE",
        help="Weight type: int8 (fastest on CPU), int8_float32, int8_float16, int8_bfloat16, int16, float16, "
        "bfloat16 or float32. Default: the saved dtype.",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="Replace OUTPUT_DIR if it exists.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        output_dir = export_ctranslate2(args.model_dir, args.output_dir, args.quantization, args.force)
    except (ImportError, ValueError, OSError) as error:
        print(f"vaswani-export-ctranslate2: error: {error}", file=sys.stderr)
        return 2
    print(output_dir)
    return 0


__all__ = ["VaswaniLoader", "export_ctranslate2", "main", "model_view"]
