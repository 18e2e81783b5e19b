"""Token-count batches (`--max-tokens` of `vaswani-train`) for transformers' `Trainer` and `Seq2SeqTrainer`.

    trainer = TokenBatchSeq2SeqTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                                       data_collator=collator, max_tokens=4096)

Each batch holds as many examples of similar length as fit `max_tokens` padded tokens per side (source and target;
an example's size is the longer of its `input_ids` and `labels`, or the dataset's `length` column), packed as
`training/batching.py` packs them, instead of `per_device_train_batch_size` examples. The batch list of an epoch is
built from (`data_seed` or `seed`, epoch) alike on every process and dealt out whole by Accelerate: process k takes
batches k, k + P, k + 2P, ... Their number is made a multiple of P by splitting the largest batches in two, so every
example is seen exactly once per epoch (training and evaluation) and every process takes the same number of batches.
`resume_from_checkpoint` rebuilds the interrupted epoch's list and skips the batches it consumed.

`predict()` keeps the Trainer's batches in dataset order (its predictions are returned row by row); `evaluate()`
runs in size order, which metrics over the whole set do not see.
"""

import math
from functools import partial

import datasets
from torch.utils.data import DataLoader
from transformers import Seq2SeqTrainer, Trainer
from transformers.trainer_utils import seed_worker

from vaswani.training.batching import SizeSortedSampler, TokenBatchSampler, example_sizes


def token_batch_sampler(
    dataset: datasets.Dataset, max_tokens: int, num_processes: int = 1, seed: int = 0, shuffle: bool = True,
    length_column: str = "length",
) -> TokenBatchSampler:  # fmt: skip
    """Batches of at most `max_tokens` padded tokens per side over all of `dataset`, as many for every process.

    `shuffle` orders examples of equal size and the batches by (seed, epoch) (call `set_epoch`); without it the
    batches come in size order. Sizes are `length_column` when the dataset has one, else `example_sizes`.
    """
    if not isinstance(dataset, datasets.Dataset) or not {length_column, "input_ids"} & set(dataset.column_names):
        raise ValueError(
            f"Token-count batches need a datasets.Dataset with an `input_ids` column (and `labels` for pairs) or a "
            f"`{length_column}` column of example sizes; got {type(dataset).__name__}."
        )
    if length_column in dataset.column_names:
        sizes = list(dataset[length_column])
    else:
        sizes = example_sizes(dataset)
    # Never drop: the remainder is split instead, so that every example is seen once in every epoch.
    return TokenBatchSampler(SizeSortedSampler(sizes, seed, shuffle), max_tokens, num_processes, drop_last=False)


class TokenBatchTrainerMixin:
    """Makes a `Trainer` (or a subclass) train and evaluate on token-count batches of at most `max_tokens`
    (`eval_max_tokens`, default `max_tokens`, for evaluation) padded tokens per side and process.

    `per_device_*_batch_size` and `train_sampling_strategy` no longer choose the batches. The Trainer's
    `train_samples_per_second` assumes `per_device_train_batch_size` examples per batch: count examples yourself.
    """

    def __init__(self, *args, max_tokens: int, eval_max_tokens: int | None = None, **kwargs):
        for name, value in (("max_tokens", max_tokens), ("eval_max_tokens", eval_max_tokens)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive number of tokens, got {value!r}.")
        super().__init__(*args, **kwargs)
        self.max_tokens, self.eval_max_tokens = max_tokens, eval_max_tokens or max_tokens
        self.train_batch_sampler: TokenBatchSampler | None = None

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self.train_batch_sampler = self._token_batch_sampler(self.train_dataset, self.max_tokens, shuffle=True)
        return self._token_batch_dataloader(self.train_dataset, self.train_batch_sampler, "Training", training=True)

    def get_eval_dataloader(self, eval_dataset: str | datasets.Dataset | None = None) -> DataLoader:
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset.")
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        elif eval_dataset is None:
            eval_dataset = self.eval_dataset
        batch_sampler = self._token_batch_sampler(eval_dataset, self.eval_max_tokens, shuffle=False)
        return self._token_batch_dataloader(eval_dataset, batch_sampler, "Evaluation", training=False)

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        # The loader that skips the consumed batches wraps the batch sampler in a way that the Trainer's `set_epoch`
        # no longer reaches (accelerate#2016), so a run resumed in its second epoch would rebuild the first epoch's
        # batches: set the epoch of the checkpoint here (its integer part is the epoch the Trainer resumes in).
        self.train_batch_sampler.set_epoch(math.floor(self.state.epoch))
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _token_batch_sampler(self, dataset, max_tokens: int, shuffle: bool) -> TokenBatchSampler:
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return token_batch_sampler(
            dataset, max_tokens, self.accelerator.num_processes, seed, shuffle, self.args.length_column_name
        )

    def _token_batch_dataloader(self, dataset, batch_sampler, description: str, training: bool) -> DataLoader:
        """The DataLoader the Trainer would build (column removal, workers), on `batch_sampler`, prepared by
        Accelerate: with no `batch_size` on the sampler it deals whole batches of varying size out in turn."""
        collator = self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description=description)
        else:
            collator = self._get_collator_with_removed_columns(collator, description=description)
        workers, rank = self.args.dataloader_num_workers, self.args.process_index
        loader = DataLoader(
            dataset, batch_sampler=batch_sampler, collate_fn=collator, num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory, persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=rank) if training else None,
        )  # fmt: skip
        return self.accelerator.prepare(loader)


class TokenBatchTrainer(TokenBatchTrainerMixin, Trainer):
    """`Trainer` on token-count batches: `TokenBatchTrainer(..., max_tokens=4096)`."""


class TokenBatchSeq2SeqTrainer(TokenBatchTrainerMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` on token-count batches: `TokenBatchSeq2SeqTrainer(..., max_tokens=4096)`."""
