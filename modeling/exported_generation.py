"""A seq2seq model exported for generation with transformers' own exporters (`transformers.exporters`, ONNX by
default), and greedy decoding over the exported graphs, token for token what `generate()` returns.

    graphs = export_for_greedy_generation(model, input_ids, attention_mask)   # needs `pip install "vaswani[onnx]"`
    tokens = greedy_generate(graphs, input_ids, attention_mask, max_new_tokens=64)   # ONNX Runtime runs them
    for name, graph in graphs.items():
        graph.save_pretrained(f"exported/{name}")   # ExportedModel.from_pretrained(f"exported/{name}") reloads one

Every view's forward pass exports as one graph with the exporters alone (`OnnxExporter().export(model, inputs,
OnnxConfig(dynamic=True))`). Generation needs three graphs:
- `encoder`: `generate()` runs the encoder outside `forward`, once per source batch.
- `prefill`: the first decoder step, on an empty cache; it computes the cross-attention keys and values once.
- `decode`: every later step, one token each, on the cache the previous step returned.
`HfExporter.export_for_generation` traces its decode graph at the first decoding step, where the self-attention
cache holds one position, and torch.export specialises an axis of size 1: that graph accepts a cache of exactly one
position, so it decodes the second token and refuses the third. Here the decode step is traced on a cache of two
positions, so its length stays symbolic, as do batch and source length in all three graphs.
"""

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache


def empty_cache() -> EncoderDecoderCache:
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def export_for_greedy_generation(model, input_ids, attention_mask, exporter=None, config=None) -> dict:
    """`{"encoder", "prefill", "decode"}` -> `transformers.exporters.ExportedModel`, traced on these sample inputs
    (any batch of at least 2 rows and source of at least 2 tokens; the graphs take other sizes). `exporter` and
    `config` default to `OnnxExporter()` and `OnnxConfig(dynamic=True)`; the other exporters of
    `transformers.exporters` take the same calls (tested: ONNX)."""
    if exporter is None or config is None:
        from transformers.exporters import OnnxConfig, OnnxExporter

        exporter, config = exporter or OnnxExporter(), config or OnnxConfig(dynamic=True)
    model = model.eval()
    encoder = model.get_encoder()
    source = {"input_ids": input_ids, "attention_mask": attention_mask}
    with torch.no_grad():
        step = {
            "attention_mask": attention_mask,
            "decoder_input_ids": torch.full((len(input_ids), 1), model.config.decoder_start_token_id),
            "encoder_outputs": encoder(**source),
            "use_cache": True,
        }
        cache_of_two = model(**step, cache=model(**step, cache=empty_cache()).cache).cache
    return {
        "encoder": exporter.export(encoder, source, config),
        "prefill": exporter.export(model, {**step, "cache": empty_cache()}, config),
        "decode": exporter.export(model, {**step, "cache": cache_of_two}, config),
    }


def greedy_generate(graphs: dict, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
    """Greedy search over the exported graphs, as `generate(num_beams=1, do_sample=False)` does it: the start token,
    then one argmax per step until every row has produced `eos_token_id` (finished rows continue with
    `pad_token_id`) or `max_new_tokens` tokens were added."""
    config = graphs["prefill"].config
    encoder_outputs = graphs["encoder"](input_ids=input_ids, attention_mask=attention_mask)
    tokens = torch.full((len(input_ids), 1), config.decoder_start_token_id)
    finished = torch.zeros(len(input_ids), dtype=torch.bool)
    step = {"attention_mask": attention_mask, "encoder_outputs": encoder_outputs}
    outputs = graphs["prefill"](**step, decoder_input_ids=tokens, cache=empty_cache())
    for _ in range(max_new_tokens):
        next_tokens = outputs.logits[:, -1].argmax(dim=-1)
        next_tokens = torch.where(finished, config.pad_token_id, next_tokens)
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
        finished |= next_tokens == config.eos_token_id
        if finished.all() or tokens.shape[1] > max_new_tokens:
            break
        outputs = graphs["decode"](**step, decoder_input_ids=next_tokens[:, None], cache=outputs.cache)
    return tokens
