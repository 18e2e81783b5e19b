"""One rank of the checks of transformers' native distribution in `test_distributed.py`, run as
`torchrun --nproc-per-node 2 tests/distributed_worker.py --models DIR --out PREFIX` on CPU (gloo).

Each rank loads the same checkpoint twice, plainly and with `distributed_config=DistributedConfig(...)`, runs both on
the same inputs and writes what it measured to `<out>.rank<N>.json`; the test, not this script, judges the numbers.
"""

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers import DistributedConfig

from vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
)


VIEWS = {
    "seq2seq": VaswaniForConditionalGeneration,
    "mlm": VaswaniForMaskedLM,
    "clm": VaswaniForCausalLM,
    "classification": VaswaniForSequenceClassification,
}


def example_batch(view: str, vocab_size: int) -> dict:
    """Fixed ids with left padding in one row, so that masks and positions are exercised too."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab_size, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if view == "seq2seq":
        batch["decoder_input_ids"] = torch.randint(5, vocab_size, (2, 5), generator=generator)
    return batch


def is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from the ranks when it is a DTensor shard."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def distributed_config(mode: str) -> DistributedConfig:
    world_size = int(os.environ["WORLD_SIZE"])
    return DistributedConfig(tp_size=world_size) if mode == "tp" else DistributedConfig(fsdp_size=world_size)


def compare_inference(models: Path, mode: str) -> dict:
    """Per view: the largest logit difference, and greedy and beam tokens of both models for the generating views."""
    report = {}
    for view, model_class in VIEWS.items():
        reference = model_class.from_pretrained(models / view).eval()
        sharded = model_class.from_pretrained(models / view, distributed_config=distributed_config(mode)).eval()
        batch = example_batch(view, reference.config.vocab_size)
        with torch.no_grad():
            expected, got = reference(**batch).logits, full(sharded(**batch).logits)
        entry = {"max_logit_difference": (expected - got).abs().max().item(), "shape": list(got.shape)}
        if view in ("seq2seq", "clm"):
            prompt = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            for name, settings in {"greedy": {"num_beams": 1}, "beam": {"num_beams": 3}}.items():
                settings = {**settings, "max_new_tokens": 6, "do_sample": False, "min_new_tokens": 6}
                entry[name] = [model.generate(**prompt, **settings).tolist() for model in (reference, sharded)]
        report[view] = entry
    return report


def train_steps(model, batch: dict, steps: int) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def compare_training(models: Path, mode: str, steps: int) -> dict:
    """A few AdamW steps of the seq2seq model on one batch, tensor-parallel and in one process; every rank sees the
    whole batch (tensor parallelism splits the model, not the data)."""
    initial = VaswaniForConditionalGeneration.from_pretrained(models / "seq2seq").state_dict()
    reference = VaswaniForConditionalGeneration.from_pretrained(models / "seq2seq")
    sharded = VaswaniForConditionalGeneration.from_pretrained(
        models / "seq2seq", distributed_config=distributed_config(mode)
    )
    batch = example_batch("seq2seq", reference.config.vocab_size)
    batch["labels"] = batch.pop("decoder_input_ids")
    losses = [train_steps(model, batch, steps) for model in (reference, sharded)]
    expected = dict(reference.named_parameters())
    differences = {name: (full(param.detach()) - expected[name].detach()).abs().max().item()
                   for name, param in sharded.named_parameters()}  # fmt: skip
    moved = [(expected[name].detach() - initial[name]).abs().max().item() for name in expected]
    return {
        "losses": losses,
        "max_parameter_difference": differences,
        "largest_update": max(moved),
        "sharded_parameters": sorted(name for name, param in sharded.named_parameters() if is_sharded(param)),
        "tied": sharded.lm_head.weight is sharded.model.shared.weight is sharded.model.decoder.embed_tokens.weight,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True, help="a folder with one saved model per view (VIEWS)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {
        "tp": compare_inference(args.models, "tp"),
        "fsdp": compare_inference(args.models, "fsdp"),
        "tp_training": compare_training(args.models, "tp", args.steps),
    }
    Path(f"{args.out}.rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
