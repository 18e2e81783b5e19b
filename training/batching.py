"""How examples become batches: token-count batching (`--max-tokens`), as fairseq, OpenNMT and Marian batch and as
the paper did (§5.1); sentence batches grouped by length (`--batch-size`); the batches of a stream (`StreamBatches`,
--streaming); and the DataLoaders of training and evaluation over them.

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

import itertools

import torch
from datasets import IterableDataset
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from vaswani.configuration.errors import InputError
from vaswani.modeling.batching import pack


def example_size(input_ids: list[int], labels: list[int] | None = None) -> int:
    """Padded tokens an example costs on each side: max(source, target) for pairs, the block length otherwise. Every
    sampler (token batches, sentence batches grouped by length, stream pools) measures examples by this."""
    return max(len(input_ids), len(labels or ()))


def example_sizes(dataset) -> list[int]:
    """`example_size` of every example of a (tokenized) Dataset."""
    labels = dataset["labels"] if "labels" in dataset.column_names else itertools.repeat(None)
    return [example_size(ids, target) for ids, target in zip(dataset["input_ids"], labels)]


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


def global_batch_description(
    batch_size: int | None, max_tokens: int | None, accumulation: int, num_processes: int, pairs: bool
) -> str:
    """What one optimiser step holds, over every process and accumulated micro-batch (printed at the start of training
    and written into the model card); `pairs`: source and target sides (seq2seq)."""
    if max_tokens is None:
        size, total = f"{batch_size} examples", f"{batch_size * accumulation * num_processes} examples"
    else:
        tokens = max_tokens * accumulation * num_processes
        size = f"{max_tokens} tokens"
        sides = f"{tokens} source + {tokens} target" if pairs else f"{tokens}"
        total = f"up to {sides} tokens (padding included)"
    return f"{size} x {accumulation} accumulation x {num_processes} processes = {total}"


# ----------------------------------------------------------------------------------------------- loaders


def training_loader(
    dataset, collator, seed: int, num_processes: int, batch_size: int | None = None, max_tokens: int | None = None,
    shuffle_buffer: int = 10_000,
) -> DataLoader:
    """Batches of similar lengths, `batch_size` examples (or `max_tokens`) per process, in an order fixed by (seed,
    epoch). A stream (an IterableDataset, --streaming) is this process's own already, so Accelerate is not to
    prepare its loader; it is batched in pools of `shuffle_buffer` examples."""
    if isinstance(dataset, IterableDataset):
        batches = StreamBatches(dataset, seed, shuffle_buffer, batch_size, max_tokens)
        return DataLoader(batches, batch_size=None, collate_fn=collator, generator=own_generator(seed))
    if max_tokens is not None:
        return token_batch_loader(dataset, collator, max_tokens, num_processes, seed, True, own_generator(seed))
    global_batch = batch_size * num_processes
    sampler = EpochLengthGroupedSampler(global_batch, example_sizes(dataset), seed)
    return DataLoader(
        dataset, batch_size=global_batch, sampler=sampler, collate_fn=collator, drop_last=True,
        generator=own_generator(seed),
    )  # fmt: skip


def evaluation_loader(
    dataset, collator, seed: int, num_processes: int, batch_size: int | None = None, max_tokens: int | None = None
) -> DataLoader:
    """Every example once, in dataset order (token batches: sorted by size), batched as for training."""
    if max_tokens is not None:
        return token_batch_loader(dataset, collator, max_tokens, num_processes, seed, False, own_generator(seed))
    batch = batch_size * num_processes
    return DataLoader(dataset, batch_size=batch, collate_fn=collator, generator=own_generator(seed))


def own_generator(seed: int) -> torch.Generator:
    """Starting an iterator over a DataLoader draws a seed from its generator, by default torch's global one, which
    dropout also draws from: with its own, evaluating or resuming does not shift the dropout masks of training."""
    return torch.Generator().manual_seed(seed)


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler (batches of similar lengths waste less compute on padding), shuffled by
    (seed, epoch) alone: every process draws the same order, and a resumed run draws the order it left."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


class StreamBatches(torch.utils.data.IterableDataset):
    """Batches (lists of examples, collated by the DataLoader) from a stream of tokenized examples.

    The stream is cut into pools of `pool_size` examples; each pool is sorted by size and cut into batches of
    `batch_size` examples, or packed into batches of at most `max_tokens` padded tokens per side (as
    `pack`), and its batches are shuffled, so that a batch holds examples of similar length (less padding)
    but the batch order stays random. The examples left over by a pool's batches of `batch_size` join the next pool;
    those of the epoch's last pool are dropped. Everything is drawn from (seed, epoch): the same epoch gives the same
    batches, and `skip` (set before iterating) drops the first ones without collating them, for a resume.
    """

    def __init__(self, examples: IterableDataset, seed: int, pool_size: int, batch_size: int | None = None,
                 max_tokens: int | None = None):  # fmt: skip
        self.examples, self.seed, self.pool_size = examples, seed, pool_size
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.examples.set_epoch(epoch)

    def __iter__(self):
        return itertools.islice(self.batches(), self.skip, None)

    def batches(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        left_over = []
        examples = iter(self.examples)
        while pool := list(itertools.islice(examples, self.pool_size)):
            pool = [*left_over, *pool]
            sizes = [example_size(example["input_ids"], example.get("labels")) for example in pool]
            order = sorted(range(len(pool)), key=sizes.__getitem__)  # stable: equal sizes keep the shuffled order
            if self.max_tokens is not None:
                check_max_tokens(sizes, self.max_tokens)
                batches, left_over = pack(order, sizes, self.max_tokens), []
            else:
                whole = len(order) - len(order) % self.batch_size
                batches = [order[start : start + self.batch_size] for start in range(0, whole, self.batch_size)]
                left_over = [pool[index] for index in order[whole:]]
            for index in torch.randperm(len(batches), generator=generator).tolist():
                yield [pool[position] for position in batches[index]]
