"""Token-count batching (`--max-tokens`), as fairseq, OpenNMT and Marian batch and as the paper did (§5.1).

A batch holds as many examples of similar length as fit `max_tokens` padded tokens on each side: an example's size
is the longer of its source and target (its block length for mlm/clm), and a batch of n examples whose largest
size is m costs n * m, so it holds at most `max_tokens` source and at most `max_tokens` target tokens, padding
included. The paper's "approximately 25000 source tokens and 25000 target tokens" per step is then
`max_tokens x gradient_accumulation_steps x processes` of about 25000.

Each epoch the examples are shuffled (ties between equal sizes broken at random), stably sorted by size, packed
greedily, and the batches are shuffled, all from (seed, epoch): every process builds the same list, Accelerate
hands process k the batches k, k + P, k + 2P, ... (the list is cut to a multiple of P), and a resumed run builds the
list it left. One optimiser step thus takes `accumulation x processes` batches of at most `max_tokens` each, the
same global budget at every step within one batch's slack.
"""

import torch
from torch.utils.data import DataLoader, Sampler

from vaswani.training.arguments import InputError


def example_sizes(dataset) -> list[int]:
    """Padded tokens an example costs on each side: max(source, target) for pairs, the block length otherwise."""
    sizes = [len(ids) for ids in dataset["input_ids"]]
    if "labels" in dataset.column_names:
        sizes = [max(size, len(labels)) for size, labels in zip(sizes, dataset["labels"])]
    return sizes


def check_max_tokens(sizes: list[int], max_tokens: int) -> None:
    longest = max(sizes, default=0)
    if longest > max_tokens:
        raise InputError(
            f"--max-tokens {max_tokens} is smaller than the longest example ({longest} tokens on one side), which "
            f"would fit in no batch: raise --max-tokens to at least {longest}, or truncate with --max-length "
            f"{max_tokens}."
        )


class SizeSortedSampler(Sampler[int]):
    """Indices sorted by size; within one size, shuffled by (seed, epoch) when `shuffle`, else in dataset order."""

    def __init__(self, sizes: list[int], seed: int = 0, shuffle: bool = True):
        self.sizes = torch.as_tensor(sizes)
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)

    def sorted_indices(self, generator: torch.Generator) -> list[int]:
        order = torch.randperm(len(self.sizes), generator=generator) if self.shuffle else torch.arange(len(self.sizes))
        return order[torch.sort(self.sizes[order], stable=True).indices].tolist()

    def __iter__(self):
        return iter(self.sorted_indices(self.epoch_generator()))

    def __len__(self) -> int:
        return len(self.sizes)


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of at most `max_tokens` padded tokens per side, from a `SizeSortedSampler`.

    The number of batches is made a multiple of `num_replicas` so that every process takes the same number: training
    drops the last few (`drop_last`, the next epoch reshuffles them in), evaluation splits its largest batches in two
    instead, so every example is evaluated exactly once. There is no `batch_size` attribute on purpose: Accelerate
    then treats the batches as of dynamic length and deals them out whole, in turn.
    """

    def __init__(self, sampler: SizeSortedSampler, max_tokens: int, num_replicas: int = 1, drop_last: bool = True):
        check_max_tokens(sampler.sizes.tolist(), max_tokens)
        self.sampler, self.max_tokens, self.num_replicas, self.drop_last = sampler, max_tokens, num_replicas, drop_last
        self._cached_epoch, self._cached_batches = None, []

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        """This epoch's batches (built once per epoch: `len` and iteration agree)."""
        if self._cached_epoch != self.sampler.epoch:
            generator = self.sampler.epoch_generator()  # one stream for the tie order and the batch order
            batches = pack(self.sampler.sorted_indices(generator), self.sampler.sizes.tolist(), self.max_tokens)
            if self.sampler.shuffle:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % self.num_replicas]
            else:
                batches = split_until_multiple(batches, self.num_replicas)
            self._cached_epoch, self._cached_batches = self.sampler.epoch, batches
        return self._cached_batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def pack(order: list[int], sizes: list[int], max_tokens: int) -> list[list[int]]:
    """Greedy packing of indices (sorted by size) into batches whose padded cost n * max(size) stays <= max_tokens."""
    batches, batch, largest = [], [], 0
    for index in order:
        if batch and (len(batch) + 1) * max(largest, sizes[index]) > max_tokens:
            batches.append(batch)
            batch, largest = [], 0
        batch.append(index)
        largest = max(largest, sizes[index])
    return [*batches, batch] if batch else batches


def split_until_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest batches in two until their number is a multiple of `multiple` (a smaller batch still fits
    the budget); fails only with fewer examples than processes."""
    batches = list(batches)
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        if len(batches[largest]) < 2:
            raise InputError(f"Cannot deal {sum(map(len, batches))} examples out to {multiple} processes evenly.")
        batch = batches.pop(largest)
        batches[largest:largest] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
    return batches


def token_batch_loader(
    dataset, collator, max_tokens: int, num_processes: int, seed: int, training: bool, generator=None
) -> DataLoader:
    """A DataLoader of token-count batches; `training` shuffles by (seed, epoch) and drops the remainder."""
    sampler = SizeSortedSampler(example_sizes(dataset), seed=seed, shuffle=training)
    batch_sampler = TokenBatchSampler(sampler, max_tokens, num_processes, drop_last=training)
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collator, generator=generator)


def padding_fraction(batches: list[list[int]], dataset) -> float:
    """Share of the padded tensors' positions (source and target, or blocks) that are padding."""
    sides = [[len(ids) for ids in dataset["input_ids"]]]
    if "labels" in dataset.column_names:
        sides.append([len(ids) for ids in dataset["labels"]])
    padded = real = 0
    for side in sides:
        for batch in batches:
            lengths = [side[i] for i in batch]
            padded, real = padded + len(batch) * max(lengths), real + sum(lengths)
    return 1 - real / padded if padded else 0.0


def global_batch_description(args, num_processes: int) -> str:
    """What one optimiser step holds, over every process and accumulated micro-batch (printed at the start of training
    and written into the model card)."""
    accumulation = args.gradient_accumulation_steps
    if args.max_tokens is None:
        size, total = f"{args.batch_size} examples", f"{args.batch_size * accumulation * num_processes} examples"
    else:
        tokens = args.max_tokens * accumulation * num_processes
        size = f"{args.max_tokens} tokens"
        sides = f"{tokens} source + {tokens} target" if args.objective == "seq2seq" else f"{tokens}"
        total = f"up to {sides} tokens (padding included)"
    return f"{size} x {accumulation} accumulation x {num_processes} processes = {total}"
