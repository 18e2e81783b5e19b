"""Packing examples into batches by padded token count, for training (`vaswani-train --max-tokens`) and for
translation (`vaswani-translate --max-tokens`) alike: one definition of what a batch of tokens costs."""


def pack(
    order: list[int], sizes: list[int], max_tokens: int | None, max_examples: int | None = None
) -> list[list[int]]:
    """Indices, taken greedily in `order`, in batches whose padded cost n * max(size) stays <= `max_tokens` and that
    hold at most `max_examples` indices (None: no such bound). `order` sorted by size keeps the padding small."""
    batches, batch, largest = [], [], 0
    for index in order:
        too_many = max_examples is not None and len(batch) == max_examples
        too_costly = max_tokens is not None and (len(batch) + 1) * max(largest, sizes[index]) > max_tokens
        if batch and (too_many or too_costly):
            batches.append(batch)
            batch, largest = [], 0
        batch.append(index)
        largest = max(largest, sizes[index])
    return [*batches, batch] if batch else batches
