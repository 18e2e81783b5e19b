"""Inference speed and quality of the fast paths: CTranslate2 (float32, int8) and PyTorch's static cache + compile.

`speed`: generation throughput of one seq2seq size, every engine in ONE process, interleaved round by round (the
order rotates every round, so drift of a shared machine hits every engine alike):

| engine                  | what runs                                                                       |
|-------------------------|---------------------------------------------------------------------------------|
| `marian-generate`       | `MarianMTModel.generate()`, the transformers model a user would otherwise pick   |
| `marian-ct2-float32/int8` | the same Marian weights converted by CTranslate2's own Marian loader          |
| `ours-ct2-float32/int8` | `VaswaniForConditionalGeneration` exported by `vaswani-export-ctranslate2`        |
| `ours-generate`         | our `generate()`, dynamic cache (the default)                                    |
| `ours-static-compiled`  | our `generate(cache_implementation="static")` with the forward `torch.compile`d   |
| `ours-torch-compiled`   | `CompiledGenerator` (`--backend torch-compiled`): static cache, compiled step     |
| `ours-torch-compiled-int8` | the same with int8 weights, bfloat16 activations (decoder, output projection)   |

Both models are built by `benchmark.py` at the same size (weights from a fixed seed, tied embeddings, ReLU,
post-LN, sinusoids); inputs are its fixed draw of source sentences (log-normal lengths, median 30 tokens); every
engine generates exactly `--new-tokens` tokens per sentence (min = max length), greedy or with 4 beams, at batch 1
and 8. Tokens per second count batch x new tokens. Threads: `--threads` for PyTorch (`torch.set_num_threads`) and
for CTranslate2 (`intra_threads`, one translator replica), the same for all.

`quality`: on a trained model, BLEU (sacrebleu) of the test split translated by `vaswani-translate`'s code path with
each backend (generate(), CTranslate2 float32 and int8, torch-compiled float32 and int8), and how often each
backend's greedy tokens equal generate()'s, sentence by sentence.

    python benchmarks/inference.py speed --size small --rounds 5 --threads 1
    python benchmarks/inference.py quality --model outputs/vaswani-en-es --num-beams 4 --length-penalty 0.6
"""

import argparse
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer, models
from transformers import CompileConfig, MarianMTModel, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
import benchmark  # noqa: E402  (the sizes, models and inputs of the main benchmark, so that both measure the same)

import ctranslate2  # noqa: E402
from ctranslate2.converters.transformers import MarianMTLoader  # noqa: E402

from vaswani.modeling.compiled_generation import CompiledGenerator  # noqa: E402
from vaswani.modeling.ctranslate2_export import export_ctranslate2  # noqa: E402

ENGINES = (
    "marian-generate", "marian-ct2-float32", "marian-ct2-int8", "ours-ct2-float32", "ours-ct2-int8", "ours-generate",
    "ours-static-compiled", "ours-torch-compiled", "ours-torch-compiled-int8",
)  # fmt: skip
SETTINGS = [(1, 1), (8, 1), (1, 4), (8, 4)]  # (batch, beams)
RATIOS = [  # (numerator, denominator): > 1 when the first is faster
    ("ours-ct2-int8", "marian-generate"),
    ("ours-ct2-float32", "marian-generate"),
    ("ours-ct2-int8", "marian-ct2-int8"),
    ("ours-ct2-float32", "marian-ct2-float32"),
    ("marian-ct2-int8", "marian-generate"),
    ("ours-generate", "marian-generate"),
    ("ours-static-compiled", "ours-generate"),
    ("ours-torch-compiled", "ours-generate"),
    ("ours-torch-compiled", "ours-ct2-float32"),
    ("ours-torch-compiled", "ours-ct2-int8"),
    ("ours-torch-compiled-int8", "ours-ct2-float32"),
    ("ours-torch-compiled-int8", "ours-ct2-int8"),
]


# ----------------------------------------------------------------------------------------------- speed


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Token strings for the benchmark's random ids (CTranslate2 takes strings): the special tokens, then w5, w6..."""
    special = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    vocab = {token: index for index, token in enumerate(special + [f"w{i}" for i in range(len(special), vocab_size)])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
    )  # fmt: skip


def convert_marian(model: MarianMTModel, output_dir: Path, quantization: str) -> str:
    """Marian through CTranslate2's own loader, as `ct2-transformers-converter` converts it. That loader drops the
    last vocabulary row (where transformers' Marian keeps its `<pad>`), so the last token is named `<pad>` for it:
    the one word id that becomes unknown to Marian (the benchmark's last) changes nothing measurable."""
    size = model.config.vocab_size
    tokens = ["<blank>", "<s>", "</s>", "<unk>", "<mask>", *(f"w{i}" for i in range(5, size - 1)), "<pad>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>")),
        eos_token="</s>", unk_token="<unk>",
    )  # fmt: skip
    spec = MarianMTLoader()(model, tokenizer)
    spec.validate()
    spec.optimize(quantization=quantization)
    output_dir.mkdir(parents=True)
    spec.save(str(output_dir))
    return str(output_dir)


def build_engines(size, workload, threads: int, workdir: Path, engines: list[str]) -> dict:
    """name -> function(inputs, beams) -> seconds for one forced-length generation call."""
    tokenizer = word_tokenizer(size.vocab_size)
    ours = benchmark.build_model("seq2seq", "ours", size, "sdpa", workload.seed).eval()
    marian = benchmark.build_model("seq2seq", "reference", size, "sdpa", workload.seed).eval()
    ours.save_pretrained(workdir / "ours")
    tokenizer.save_pretrained(workdir / "ours")
    built = {}
    for name in engines:
        if name.startswith("ours-torch-compiled"):
            quantization = name.removeprefix("ours-torch-compiled").removeprefix("-") or None
            built[name] = compiled_engine(CompiledGenerator(ours, quantization=quantization), workload.new_tokens)
            continue
        if name.endswith("generate") or name == "ours-static-compiled":
            model = marian if name.startswith("marian") else ours
            built[name] = generate_engine(model, workload.new_tokens, static=name == "ours-static-compiled")
            continue
        quantization = name.rsplit("-", 1)[1]
        folder = workdir / name
        if name.startswith("ours"):
            export_ctranslate2(workdir / "ours", folder, quantization=quantization)
        else:
            convert_marian(marian, folder, quantization)
        translator = ctranslate2.Translator(str(folder), device="cpu", inter_threads=1, intra_threads=threads)
        built[name] = ct2_engine(translator, tokenizer, workload.new_tokens)
    return built


def generate_engine(model, new_tokens: int, static: bool):
    def run(inputs: dict, beams: int) -> float:
        config = benchmark.generation_config("seq2seq", new_tokens, beams)
        if static:
            config.cache_implementation = "static"
            config.compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
            config.compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told
        return benchmark.time_generation(model, inputs, config, torch.device("cpu"))

    return run


def compiled_engine(generator: CompiledGenerator, new_tokens: int):
    def run(inputs: dict, beams: int) -> float:
        start = time.perf_counter()
        output = generator.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams)
        elapsed = time.perf_counter() - start
        if output.shape[1] != new_tokens + 1:  # + the decoder start token
            raise RuntimeError(f"CompiledGenerator generated {output.shape[1] - 1} tokens, expected {new_tokens}.")
        return elapsed

    return run


def ct2_engine(translator, tokenizer, new_tokens: int):
    def run(inputs: dict, beams: int) -> float:
        tokens = [
            tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
            for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])
        ]
        start = time.perf_counter()
        results = translator.translate_batch(
            tokens, beam_size=beams, min_decoding_length=new_tokens, max_decoding_length=new_tokens,
            max_input_length=0,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        lengths = {len(result.hypotheses[0]) for result in results}
        if lengths != {new_tokens}:
            raise RuntimeError(f"CTranslate2 generated {sorted(lengths)} tokens, expected {new_tokens}.")
        return elapsed

    return run


def speed(args: Namespace) -> None:
    torch.set_num_threads(args.threads)
    size = benchmark.SIZES[args.size]
    workload = benchmark.Workload(new_tokens=args.new_tokens)
    inputs = {batch: benchmark.generation_inputs("seq2seq", size, batch, workload.seed) for batch in (1, 8)}
    with tempfile.TemporaryDirectory() as workdir:
        engines = build_engines(size, workload, args.threads, Path(workdir), args.engines)
        for name, engine in list(engines.items()):  # warm-up (and compilation), untimed
            try:
                for batch, beams in SETTINGS:
                    engine(inputs[batch], beams)
            except Exception as error:  # report an engine that does not work here, measure the others
                print(f"{name}: skipped, {type(error).__name__}: {str(error).splitlines()[0][:200]}", file=sys.stderr)
                del engines[name]
        seconds = {(name, setting): [] for name in engines for setting in SETTINGS}
        for round_index in range(args.rounds):
            order = list(engines)[round_index % len(engines) :] + list(engines)[: round_index % len(engines)]
            for setting in SETTINGS:
                for name in order:
                    seconds[name, setting].append(engines[name](inputs[setting[0]], setting[1]))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    report(seconds, list(engines), args, size)


def report(seconds: dict, engines: list[str], args: Namespace, size) -> None:
    columns = [f"{'greedy' if beams == 1 else f'beam{beams}'} b{batch}" for batch, beams in SETTINGS]
    print(f"Size {size.name} (d_model {size.d_model}, {size.layers}+{size.layers} layers, vocabulary "
          f"{size.vocab_size}); {args.new_tokens} new tokens; {args.threads} thread(s); {args.rounds} rounds; "
          f"median tok/s (min-max over rounds).\n")  # fmt: skip
    print("| engine | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in engines:
        cells = []
        for batch, beams in SETTINGS:
            rates = [batch * args.new_tokens / value for value in seconds[name, (batch, beams)]]
            cells.append(f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})")
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print("\nRatios, medians of per-round ratios (min-max), > 1 when the first engine is faster:\n")
    print("| ratio | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for numerator, denominator in RATIOS:
        if numerator not in engines or denominator not in engines:
            continue
        cells = []
        for setting in SETTINGS:
            ratios = [b / a for a, b in zip(seconds[numerator, setting], seconds[denominator, setting])]
            cells.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        print(f"| `{numerator}` / `{denominator}` | " + " | ".join(cells) + " |")
    print(f"\nReproduce: python benchmarks/inference.py speed --size {size.name} --rounds {args.rounds} "
          f"--threads {args.threads} --new-tokens {args.new_tokens} --engines {','.join(args.engines)}")  # fmt: skip


# ----------------------------------------------------------------------------------------------- quality


def quality(args: Namespace) -> None:
    import sacrebleu

    from vaswani.modeling import translation_backends
    from vaswani.modeling.translate_cli import translate_lines
    from vaswani.modeling.translation_backends import CTranslate2Backend, TransformersBackend
    from vaswani.training.corpus import load_parallel_corpus

    torch.set_num_threads(args.threads)
    test = load_parallel_corpus()[args.split]
    sources, references = test[args.source_column], test[args.target_column]
    if args.max_examples:
        sources, references = sources[: args.max_examples], references[: args.max_examples]
    with tempfile.TemporaryDirectory() as workdir:
        int8_dir = export_ctranslate2(args.model, Path(workdir) / "int8", quantization="int8")
        backends = {
            "generate()": TransformersBackend(args.model, "cpu"),
            "CTranslate2 float32": CTranslate2Backend(args.model, "cpu", "default", threads=args.threads),
            "CTranslate2 int8": CTranslate2Backend(int8_dir, "cpu", "default", threads=args.threads),
        }
        if args.eager_steps:  # the same steps, uncompiled: the same arithmetic, no compiling
            translation_backends.CompiledGenerator = partial(CompiledGenerator, compile=False)
        backends["torch-compiled float32"] = translation_backends.TorchCompiledBackend(args.model, "cpu")
        backends["torch-compiled int8"] = translation_backends.TorchCompiledBackend(args.model, "cpu", "int8")
        print(f"{len(sources)} sentences of the {args.split} split, {args.source_column} -> {args.target_column}\n")
        beam = f"beam {args.num_beams}, lp {args.length_penalty}"
        print(f"| backend | BLEU ({beam}) | chrF | seconds ({beam}) | greedy tokens equal to generate()'s |")
        print("|---|---|---|---|---|")
        greedy = {}
        for name, backend in backends.items():
            options = Namespace(num_beams=1, length_penalty=1.0, batch_size=None, max_tokens=args.max_tokens)
            greedy[name] = translate_lines(backend, sources, options)
            options.num_beams, options.length_penalty = args.num_beams, args.length_penalty
            start = time.perf_counter()
            hypotheses = translate_lines(backend, sources, options)
            elapsed = time.perf_counter() - start
            bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
            chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
            same = sum(a == b for a, b in zip(greedy[name], greedy["generate()"]))
            agreement = f"{same}/{len(sources)} ({100 * same / len(sources):.1f}%)"
            print(f"| {name} | {bleu:.2f} | {chrf:.2f} | {elapsed:.1f} | {agreement} |")


def parse_arguments(argv=None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    speed_parser = commands.add_parser("speed", help="Generation throughput, every engine interleaved.")
    speed_parser.add_argument("--size", choices=list(benchmark.SIZES), default="small")
    speed_parser.add_argument("--rounds", type=int, default=5)
    speed_parser.add_argument("--new-tokens", type=int, default=64)
    speed_parser.add_argument("--engines", type=lambda text: text.split(","), default=list(ENGINES))
    quality_parser = commands.add_parser("quality", help="BLEU of each backend and greedy agreement.")
    quality_parser.add_argument("--model", required=True, help="A trained seq2seq model folder.")
    quality_parser.add_argument("--split", default="test")
    quality_parser.add_argument("--source-column", default="en")
    quality_parser.add_argument("--target-column", default="es")
    quality_parser.add_argument("--num-beams", type=int, default=4)
    quality_parser.add_argument("--length-penalty", type=float, default=0.6)
    quality_parser.add_argument("--max-tokens", type=int, default=2048)
    quality_parser.add_argument("--max-examples", type=int)
    quality_parser.add_argument(
        "--eager-steps", action="store_true", help="Run the torch-compiled backends' steps uncompiled (no compiling)."
    )
    for command in (speed_parser, quality_parser):
        command.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_arguments(argv)
    speed(args) if args.command == "speed" else quality(args)


if __name__ == "__main__":
    main()
