"""Attention maps: what every head of every layer attends to for one input, drawn as one PNG.

`plot_attention(model, tokenizer, text, target_text=None, out="attention.png")` draws, for each kind of attention
the model has (encoder self-attention, decoder self-attention, cross-attention), a grid of layers (rows) by heads
(columns), with the tokens on the axes: queries down, keys across. A seq2seq model without `target_text` attends
over its own greedy translation. The command line does the same for a saved model:

    vaswani-attention MODEL_DIR --text "In the beginning" [--target "En el principio"] --out attention.png
"""

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from vaswani.modeling.modeling_vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
)
from vaswani.modeling.pipeline_vaswani import with_default_length

HEADS = {
    head.__name__: head
    for head in (
        VaswaniForConditionalGeneration, VaswaniForMaskedLM, VaswaniForCausalLM, VaswaniForSequenceClassification
    )
}

PANEL_INCHES = 1.6


@dataclass
class AttentionMap:
    """The weights of one kind of attention: (layers, heads, queries, keys), and the tokens of both axes."""

    title: str
    query_tokens: list[str]
    key_tokens: list[str]
    weights: torch.Tensor


@contextmanager
def eager_inference(model) -> Iterator:
    """The model in eval mode with eager attention, the implementation that returns its weights (sdpa and flash
    compute none), then as it was."""
    implementation, training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        yield model
    finally:
        model.set_attn_implementation(implementation)
        model.train(training)


def token_labels(tokenizer, ids: torch.Tensor) -> list[str]:
    """Each token as text (byte-level BPE's "Ġworld" reads "world"); a token of spaces alone shows as "␣"."""
    return [tokenizer.decode([token_id]).strip() or "␣" for token_id in ids.tolist()]


def decoder_inputs(model, tokenizer, inputs, target_text: str | None) -> torch.Tensor:
    """`<s> y1 ... yn`: the target (or, without one, the model's greedy translation) as the decoder reads it."""
    if target_text is not None:
        labels = tokenizer(text_target=target_text, return_tensors="pt")["input_ids"].to(model.device)
        return model.prepare_decoder_input_ids_from_labels(labels)
    generate_kwargs = with_default_length(model, {"num_beams": 1, "do_sample": False}, inputs["input_ids"].shape[1])
    generated = model.generate(**inputs, **generate_kwargs)
    return generated[:, :-1] if generated[0, -1] == model.config.eos_token_id else generated


def stack(attentions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-layer (1, heads, queries, keys) -> (layers, heads, queries, keys), float32 on the CPU."""
    return torch.cat(attentions).float().cpu()


def attention_maps(model, tokenizer, text: str, target_text: str | None = None) -> list[AttentionMap]:
    """Every kind of attention `model` has, for `text` (and, for seq2seq, `target_text`): see the module docstring.

    A causal LM reads `text` as its tokenizer makes it (`causal_lm_tokenizer`: `<s> text`).
    """
    is_seq2seq = model.config.is_encoder_decoder
    if target_text is not None and not is_seq2seq:
        raise ValueError(f"target_text needs an encoder-decoder model; {type(model).__name__} reads only text.")
    with eager_inference(model), torch.no_grad():
        inputs = tokenizer(text, return_tensors="pt").to(model.device)
        source = token_labels(tokenizer, inputs["input_ids"][0])
        if not is_seq2seq:
            outputs = model(**inputs, output_attentions=True)
            title = "decoder self-attention" if model.config.is_decoder else "encoder self-attention"
            return [AttentionMap(title, source, source, stack(outputs.attentions))]
        decoder_ids = decoder_inputs(model, tokenizer, inputs, target_text)
        outputs = model(**inputs, decoder_input_ids=decoder_ids, output_attentions=True)
    target = token_labels(tokenizer, decoder_ids[0])
    return [
        AttentionMap("encoder self-attention", source, source, stack(outputs.encoder_attentions)),
        AttentionMap("decoder self-attention", target, target, stack(outputs.decoder_attentions)),
        AttentionMap("cross-attention (decoder -> encoder)", target, source, stack(outputs.cross_attentions)),
    ]


def draw_map(figure, attention: AttentionMap) -> None:
    """One grid of heatmaps: a row per layer, a column per head; token labels on the outer panels."""
    layers, heads = attention.weights.shape[:2]
    axes = figure.subplots(layers, heads, squeeze=False)
    fontsize = max(4, min(8, 160 // max(len(attention.key_tokens), len(attention.query_tokens))))
    for layer in range(layers):
        for head in range(heads):
            panel = axes[layer, head]
            panel.imshow(attention.weights[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            panel.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=7)
            panel.set_xticks(range(len(attention.key_tokens)))
            panel.set_yticks(range(len(attention.query_tokens)))
            bottom, left = layer == layers - 1, head == 0
            panel.set_xticklabels(attention.key_tokens if bottom else [], rotation=90, fontsize=fontsize)
            panel.set_yticklabels(attention.query_tokens if left else [], fontsize=fontsize)
    figure.suptitle(attention.title)


def plot_attention(model, tokenizer, text: str, target_text: str | None = None, out: str | Path = "attention.png"):
    """Draw `attention_maps(model, tokenizer, text, target_text)` into the PNG `out`; returns its path."""
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import, `import vaswani` should not

    maps = attention_maps(model, tokenizer, text, target_text)
    rows = [attention.weights.shape[0] for attention in maps]
    columns = max(attention.weights.shape[1] for attention in maps)
    # The object API, not pyplot: no global state, no display backend needed.
    size = (columns * PANEL_INCHES + 1.5, sum(rows) * PANEL_INCHES + 1.5 * len(maps))
    figure = Figure(figsize=size, dpi=120, layout="constrained")
    for subfigure, attention in zip(figure.subfigures(len(maps), 1, height_ratios=rows, squeeze=False)[:, 0], maps):
        draw_map(subfigure, attention)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    return out


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vaswani-attention", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A saved Vaswani model (folder or Hub name) with its tokenizer.")
    parser.add_argument("--text", required=True, help="The input: the source sentence, or the text of an LM.")
    parser.add_argument("--target", help="Seq2seq: the decoder's text. Default: the model's greedy translation.")
    parser.add_argument("--out", default="attention.png", help="The PNG to write (default: attention.png).")
    return parser.parse_args(argv)


def load_head(path: str):
    """The Vaswani model saved in `path`, as the head class it was saved as (its config's `architectures`)."""
    config = AutoConfig.from_pretrained(path)
    architecture = (config.architectures or ["unknown"])[0]
    if architecture not in HEADS:
        raise ValueError(f"{path} holds a {architecture}; vaswani-attention draws {', '.join(HEADS)} models.")
    return HEADS[architecture].from_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    model, tokenizer = load_head(args.model), AutoTokenizer.from_pretrained(args.model)
    print(plot_attention(model, tokenizer, args.text, args.target, args.out))
    return 0


__all__ = ["AttentionMap", "attention_maps", "eager_inference", "load_head", "main", "plot_attention"]
