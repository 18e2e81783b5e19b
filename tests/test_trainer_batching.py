"""Token-count batches in transformers' `Trainer` (`vaswani.training.trainer_batching`): the budget per batch, and on
2 CPU processes (gloo, OMP_NUM_THREADS=1 each, one `torchrun` of `trainer_batching_worker.py`) every example once
per epoch, whole batches dealt out evenly, and a resumed run that sees what the uninterrupted run saw."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_batching_worker import CHECKPOINT_STEP, EXAMPLES, MAX_TOKENS, RecordingCollator, tiny_model, toy_pairs
from transformers import Seq2SeqTrainingArguments

from vaswani.training.trainer_batching import TokenBatchSeq2SeqTrainer, token_batch_sampler


def toy_trainer(tmp_path, data, **kwargs) -> TokenBatchSeq2SeqTrainer:
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, remove_unused_columns=False, disable_tqdm=True
    )
    return TokenBatchSeq2SeqTrainer(
        model=tiny_model(), args=args, train_dataset=data, eval_dataset=data, data_collator=RecordingCollator(),
        **kwargs,
    )  # fmt: skip


def test_every_batch_holds_at_most_max_tokens_per_side_and_every_example_once(tmp_path):
    data = toy_pairs()
    trainer = toy_trainer(tmp_path, data, max_tokens=MAX_TOKENS, eval_max_tokens=2 * MAX_TOKENS)
    loaders = {MAX_TOKENS: trainer.get_train_dataloader(), 2 * MAX_TOKENS: trainer.get_eval_dataloader()}
    for budget, loader in loaders.items():
        trainer.data_collator.batches = []
        batches = list(loader)
        assert all(batch[side].numel() <= budget for batch in batches for side in ("input_ids", "labels"))
        assert sorted(sum(trainer.data_collator.batches, [])) == list(range(EXAMPLES))
        # packed, not one example a batch: the budget fits about three examples of the toy sizes
        assert len(batches) < EXAMPLES / 2


def test_a_length_column_sets_the_sizes(tmp_path):
    """Sizes come from the Trainer's `length_column_name` when the dataset has it: a size of the whole budget makes
    every batch a single example."""
    data = toy_pairs().add_column("length", [MAX_TOKENS] * EXAMPLES)
    trainer = toy_trainer(tmp_path, data, max_tokens=MAX_TOKENS)
    assert len(list(trainer.get_train_dataloader())) == EXAMPLES


def test_examples_without_sizes_and_budgets_that_are_not_token_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="input_ids"):
        token_batch_sampler([{"text": "no ids"}], max_tokens=10)
    with pytest.raises(ValueError, match="max_tokens must be a positive number of tokens, got 0"):
        toy_trainer(tmp_path, toy_pairs(), max_tokens=0)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    """Both ranks' records of one 2-process `torchrun` of the worker, and the folder of its runs."""
    out = tmp_path_factory.mktemp("trainer-batches")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    completed = subprocess.run(
        [*torchrun, str(Path(__file__).with_name("trainer_batching_worker.py")), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    return {"ranks": [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)], "out": out}


def epochs(batches: list[list[int]], per_epoch: int) -> list[list[list[int]]]:
    return [batches[start : start + per_epoch] for start in range(0, len(batches), per_epoch)]


@pytest.mark.slow
def test_two_processes_take_whole_batches_and_see_every_example_once_per_epoch(two_processes):
    ranks = two_processes["ranks"]
    per_epoch = len(ranks[0]["whole"]) // 2
    assert len(ranks[0]["whole"]) == len(ranks[1]["whole"]) == 2 * per_epoch  # the same number on both
    for epoch in range(2):
        seen = [i for rank in ranks for batch in epochs(rank["whole"], per_epoch)[epoch] for i in batch]
        assert sorted(seen) == list(range(EXAMPLES)), f"epoch {epoch}"
    # Each epoch reshuffles: the second is not the first again.
    assert epochs(ranks[0]["whole"], per_epoch)[0] != epochs(ranks[0]["whole"], per_epoch)[1]
    evaluated = [i for rank in ranks for batch in rank["evaluation"] for i in batch]
    assert sorted(evaluated) == list(range(EXAMPLES)) and len(ranks[0]["evaluation"]) == len(ranks[1]["evaluation"])


@pytest.mark.slow
def test_a_run_resumed_in_its_second_epoch_sees_the_batches_and_ends_with_the_weights_of_the_whole_run(
    two_processes,
):
    """The checkpoint lies inside the second epoch (whose order differs from the first's), on each process. Weights
    within 1e-6: the resumed run repeats the same float32 operations on the same batches, and a different batch
    would move them by about the learning rate (1e-2)."""
    for rank in two_processes["ranks"]:
        per_epoch = len(rank["whole"]) // 2
        assert per_epoch < CHECKPOINT_STEP < 2 * per_epoch  # the worker's sizes still put it in the second epoch
        assert rank["resumed"] == rank["whole"][CHECKPOINT_STEP:]
    out = two_processes["out"]
    whole, resumed = (load_file(out / run / "final" / "model.safetensors") for run in ("whole", "resumed"))
    for name, weight in whole.items():
        torch.testing.assert_close(resumed[name], weight, atol=1e-6, rtol=0, msg=name)
