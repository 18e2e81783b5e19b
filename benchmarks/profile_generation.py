"""Where a greedy decoding step goes, for our seq2seq model and Marian: `generate()`'s loop, the forward, matmuls.

    python benchmarks/profile_generation.py --config small --batch-size 1

For each model: tokens per second of a forced 64-token greedy generation (as `benchmark.py` measures it, but each
model alone, weights warm in cache), the milliseconds per step spent in `model.forward` and around it (the
`generate()` loop: logits processors, stopping criteria, cache bookkeeping), and the share of the matrix
products (`aten::mm`/`aten::addmm`, from torch.profiler). The matrix products read every decoder weight and the
output projection once per step in both models; what is left above them is what a faster implementation can cut.
"""

import argparse
import time

import torch

import benchmark

MATMUL_OPS = ("aten::mm", "aten::addmm")


def timed_forward(model) -> list[float]:
    """Wrap `model.forward` to add its wall time to the returned one-element list."""
    spent, original = [0.0], model.forward

    def forward(*args, **kwargs):
        started = time.perf_counter()
        output = original(*args, **kwargs)
        spent[0] += time.perf_counter() - started
        return output

    model.forward = forward
    return spent


def profile(which: str, size: benchmark.Size, batch_size: int, new_tokens: int, repeats: int) -> str:
    model = benchmark.build_model("seq2seq", which, size, "sdpa", seed=0).eval()
    inputs = benchmark.generation_inputs("seq2seq", size, batch_size, seed=0)
    config = benchmark.generation_config("seq2seq", new_tokens, num_beams=1)
    model.generation_config = config  # as benchmark.py does: no model-specific defaults on one side only
    with torch.inference_mode():
        model.generate(**inputs, generation_config=config)  # warm-up
        forward_time = timed_forward(model)
        started = time.perf_counter()
        for _ in range(repeats):
            model.generate(**inputs, generation_config=config)
        total = (time.perf_counter() - started) / repeats
        forward = forward_time[0] / repeats / new_tokens * 1e3  # ms per step, before the profiled run adds to it
        with torch.profiler.profile() as profiler:
            model.generate(**inputs, generation_config=config)
    events = profiler.key_averages()
    matmul = sum(event.self_cpu_time_total for event in events if event.key in MATMUL_OPS) / 1e3  # ms
    all_ops = sum(event.self_cpu_time_total for event in events) / 1e3
    step = total / new_tokens * 1e3
    return (
        f"{which:9} batch {batch_size}: {batch_size * new_tokens / total:7.1f} tok/s | per step {step:5.2f} ms: "
        f"forward {forward:5.2f} ms, generate() loop {step - forward:5.2f} ms | matmuls {matmul / all_ops:.0%} of "
        f"the profiled op time ({matmul / new_tokens:.2f} ms per step under the profiler)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=tuple(benchmark.SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=benchmark.available_cores())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for which in ("ours", "reference"):
        print(profile(which, benchmark.SIZES[args.config], args.batch_size, args.new_tokens, args.repeats))


if __name__ == "__main__":
    main()
