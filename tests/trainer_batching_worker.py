"""One rank of the checks of `TokenBatchSeq2SeqTrainer` in `test_trainer_batching.py`, run as
`torchrun --nproc-per-node 2 tests/trainer_batching_worker.py --out DIR` on CPU (gloo), or as one plain process.

The same tiny model trains 2 epochs on token-count batches, saving a checkpoint in the middle of the second epoch
(run "whole"); a fresh Trainer then resumes from that checkpoint (run "resumed"). Each rank writes the example ids of
every batch it collated, in both runs and over one pass of the evaluation loader, to `<out>/rank<N>.json`; the final
weights of both runs are saved under `<out>/<run>/final`. The test, not this script, judges what was recorded.
"""

import argparse
import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import Seq2SeqTrainingArguments

from vaswani import VaswaniConfig, VaswaniForConditionalGeneration
from vaswani.training.trainer_batching import TokenBatchSeq2SeqTrainer

EXAMPLES, MAX_TOKENS, CHECKPOINT_STEP = 37, 40, 6
PAD, START, VOCAB = 0, 1, 40


def toy_pairs() -> Dataset:
    """`EXAMPLES` pairs of random lengths 2-12 on each side, each with its `example_id`."""
    generator = torch.Generator().manual_seed(0)

    def random_ids() -> list[int]:
        length = torch.randint(2, 13, (1,), generator=generator).item()
        return torch.randint(3, VOCAB, (length,), generator=generator).tolist()

    rows = [{"example_id": i, "input_ids": random_ids(), "labels": random_ids()} for i in range(EXAMPLES)]
    return Dataset.from_list(rows)


class RecordingCollator:
    """Pads a batch (ids with PAD, labels with -100) and records which examples it held."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __call__(self, features: list[dict]) -> dict:
        self.batches.append([feature["example_id"] for feature in features])
        return {
            "input_ids": padded([feature["input_ids"] for feature in features], PAD),
            "attention_mask": padded([[1] * len(feature["input_ids"]) for feature in features], 0),
            "labels": padded([feature["labels"] for feature in features], -100),
        }


def padded(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def tiny_model() -> VaswaniForConditionalGeneration:
    torch.manual_seed(0)
    config = VaswaniConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.0,
        pad_token_id=PAD, bos_token_id=START, eos_token_id=2, decoder_start_token_id=START,
    )  # fmt: skip
    return VaswaniForConditionalGeneration(config)


def train(output_dir: Path, data: Dataset, resume_from: Path | None = None) -> RecordingCollator:
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=2, learning_rate=1e-2, save_strategy="steps",
        save_steps=CHECKPOINT_STEP, report_to="none", use_cpu=True, seed=0, remove_unused_columns=False,
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    collator = RecordingCollator()
    trainer = TokenBatchSeq2SeqTrainer(
        model=tiny_model(), args=args, train_dataset=data, eval_dataset=data, data_collator=collator,
        max_tokens=MAX_TOKENS,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(output_dir / "final"))
    if resume_from is None:  # one pass of the evaluation loader, recorded apart from training
        training_batches, collator.batches = collator.batches, []
        list(trainer.get_eval_dataloader())
        collator.evaluation_batches, collator.batches = collator.batches, training_batches
    return collator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    data = toy_pairs()
    whole = train(out / "whole", data)
    resumed = train(out / "resumed", data, resume_from=out / "whole" / f"checkpoint-{CHECKPOINT_STEP}")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    report = {"whole": whole.batches, "evaluation": whole.evaluation_batches, "resumed": resumed.batches}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
