"""ONNX export through transformers' own exporters (`transformers.exporters.OnnxExporter`, the `onnx` extra): every
view's forward graph in ONNX Runtime gives eager's outputs, and greedy decoding over the exported encoder, prefill and
decode graphs gives `generate()`'s tokens. Each export traces and converts a graph (about 10 s of a free core, more
on a busy machine): slow."""

import pytest
import torch
from conftest import tiny_config

from vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
)
from vaswani.modeling.exported_generation import export_for_greedy_generation, greedy_generate

for package in ("transformers.exporters", "onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(package)
from transformers.exporters import ExportedModel, OnnxConfig, OnnxExporter  # noqa: E402

pytestmark = pytest.mark.slow

VIEWS = {
    "seq2seq": VaswaniForConditionalGeneration,
    "mlm": VaswaniForMaskedLM,
    "clm": VaswaniForCausalLM,
    "classification": VaswaniForSequenceClassification,
}
# float32 through other kernels (ONNX Runtime's) than eager's: measured differences are under 1e-6.
TOLERANCE = 1e-5


def tiny(model_class):
    torch.manual_seed(0)
    return model_class(tiny_config()).eval()


def source_batch(rows: int, length: int, seed: int) -> dict:
    """Random ids with the first row left-padded by two, so masks and positions are exercised."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (rows, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def view_inputs(view: str, rows: int, length: int, seed: int) -> dict:
    inputs = source_batch(rows, length, seed)
    if view == "seq2seq":
        generator = torch.Generator().manual_seed(seed + 100)
        inputs["decoder_input_ids"] = torch.randint(5, 99, (rows, length - 2), generator=generator)
    if view in ("seq2seq", "clm"):
        inputs["use_cache"] = False  # the forward pass alone; generation has its own graphs below
    return inputs


@pytest.mark.parametrize("view", VIEWS)
def test_every_views_onnx_graph_gives_eagers_outputs_at_other_shapes_also_reloaded(view, tmp_path):
    model = tiny(VIEWS[view])
    exported = OnnxExporter().export(model, view_inputs(view, rows=2, length=7, seed=0), OnnxConfig(dynamic=True))
    exported.save_pretrained(tmp_path)
    reloaded = ExportedModel.from_pretrained(tmp_path)
    inputs = view_inputs(view, rows=3, length=11, seed=1)  # batch and length differ from the traced ones
    with torch.no_grad():
        expected = model(**inputs).logits
    for graph in (exported, reloaded):
        got = graph(**inputs).logits
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=0)


def test_greedy_decoding_over_the_exported_graphs_gives_generates_tokens():
    """Then with an end-of-sequence id that one row reaches first, so that a finished row continues with padding."""
    model = tiny(VaswaniForConditionalGeneration)
    graphs = export_for_greedy_generation(model, **source_batch(rows=2, length=7, seed=0))
    inputs = source_batch(rows=3, length=9, seed=1)
    expected = model.generate(**inputs, max_new_tokens=12, num_beams=1, do_sample=False)
    got = greedy_generate(graphs, **inputs, max_new_tokens=12)
    assert len(set(expected[:, 1:].flatten().tolist())) > 2  # rows differ: not one token repeated everywhere
    assert torch.equal(got, expected)
    model.config.eos_token_id = model.generation_config.eos_token_id = int(expected[0, 3])
    expected = model.generate(**inputs, max_new_tokens=12, num_beams=1, do_sample=False)
    got = greedy_generate(graphs, **inputs, max_new_tokens=12)
    assert (expected == model.config.pad_token_id).any()  # a row finished before the others
    assert torch.equal(got, expected)
