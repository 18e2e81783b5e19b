"""Final evaluation of a run: BLEU and chrF of beam-search translations, or perplexity for mlm/clm."""

import json
import re

import sacrebleu
import torch
from accelerate.utils import gather_object

from vaswani.modeling.pipeline_vaswani import EXTRA_OUTPUT_TOKENS
from vaswani.modeling.pipelines import translate
from vaswani.training.loop import evaluate_loss

EXAMPLES_SHOWN = 5
STUTTER = re.compile(r"(\w{1,3})\1{3}")  # a piece of a word four times running: "Selelelel"


def loops(translation: str) -> bool:
    """Whether a translation has degenerated into a loop, the failure of an undertrained model's beam search: a run of
    one to four words three times back to back ("de de de", "y el rey, y el rey, y el rey,") or a stutter inside a
    word. A repeated phrase elsewhere in the verse is not a loop: scripture repeats itself."""
    words = translation.split()
    for size in range(1, 5):
        for start in range(len(words) - 3 * size + 1):
            gram = words[start : start + size]
            if words[start + size : start + 2 * size] == gram == words[start + 2 * size : start + 3 * size]:
                return True
    return STUTTER.search(translation) is not None


BOOTSTRAP_SAMPLES = 1000  # sacrebleu's --confidence default


def corpus_scores(
    hypotheses: list[str], references: list[str], signatures: bool = False, confidence: bool = False
) -> dict:
    """Corpus BLEU and chrF with sacrebleu's defaults (its own 13a tokenization of the detokenized text), one
    reference per hypothesis; with `signatures`, also sacrebleu's signature of each score (`bleu_signature`:
    "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:..."), which papers quote so that scores compare.

    With `confidence`, also sacrebleu's bootstrap 95% confidence interval (as `sacrebleu --confidence`: 1000
    resamples of the test sentences with its fixed seed, 12345, so the same translations give the same interval):
    `bleu_ci95` is the interval's half-width around the resamples' mean `bleu_bootstrap_mean`, and so for chrF
    (None where sacrebleu gives no interval, see `score_with_interval`). It measures how much the score depends on
    which sentences were drawn, not how much it varies from seed to seed.

    sacrebleu is called directly: `evaluate.load("sacrebleu")` fetches its script from the Hub, which an offline
    machine cannot reach.
    """
    scores = {}
    for name, metric_class in (("bleu", sacrebleu.BLEU), ("chrf", sacrebleu.CHRF)):
        interval = score_with_interval(metric_class, hypotheses, references) if confidence else None
        if confidence:
            scores[f"{name}_ci95"] = interval and interval[2]["confidence_var"]
            scores[f"{name}_bootstrap_mean"] = interval and interval[2]["confidence_mean"]
        metric, score = interval[:2] if interval else (metric_class(), None)
        scores[name] = (score or metric.corpus_score(hypotheses, [references])).score
        if signatures:  # known only once scored (the number of references, the resamples are part of it)
            scores[f"{name}_signature"] = str(metric.get_signature())
    return scores


def score_with_interval(metric_class, hypotheses: list[str], references: list[str]) -> tuple | None:
    """(metric, score, interval) from sacrebleu's bootstrap, the interval as its JSON line gives it (the public form:
    `confidence_mean`, `confidence_var`), or None where sacrebleu gives none: when every resample scores 0 (it then
    leaves the interval out), or when only some do (sacrebleu 2.6's BLEU returns a Python 0.0 beside float32 scores
    and `statistics.mean` refuses the mix). Both happen only to a model whose translations match almost no word."""
    metric = metric_class()
    try:
        score = metric.corpus_score(hypotheses, [references], n_bootstrap=BOOTSTRAP_SAMPLES)
    except TypeError:
        return None
    interval = json.loads(score.format(width=4, signature=str(metric.get_signature()), is_json=True))
    return (metric, score, interval) if "confidence_var" in interval else None


def translation_metrics(
    model, tokenizer, sources: list[str], references: list[str], accelerator, num_beams: int, length_penalty: float,
    max_length: int, confidence: bool = False,
) -> tuple[dict, list[dict]]:
    """`corpus_scores` of the model's beam-search translations of `sources` (each at most `max_length` tokens, the
    translation up to 50 more, §6.1), with the bootstrap interval if `confidence` (the final test scores: validation
    BLEU during training has no use for it), and a few examples."""
    model = accelerator.unwrap_model(model).eval()
    with accelerator.split_between_processes(sources) as shard:
        hypotheses = translate(
            model, tokenizer, shard, show_progress=accelerator.is_local_main_process,
            num_beams=num_beams, length_penalty=length_penalty, max_new_tokens=max_length + EXTRA_OUTPUT_TOKENS,
        )  # fmt: skip
    hypotheses = gather_object(hypotheses)
    metrics = corpus_scores(hypotheses, references, signatures=True, confidence=confidence)
    metrics["translated_examples"] = len(sources)
    metrics["looping_translations"] = sum(map(loops, hypotheses))
    examples = [
        {"source": source, "reference": reference, "translation": hypothesis}
        for source, reference, hypothesis in list(zip(sources, references, hypotheses))[:EXAMPLES_SHOWN]
    ]
    return metrics, examples


def language_model_metrics(model, loader, accelerator, seed: int) -> dict:
    """Loss and perplexity on held-out blocks; masked-LM masks are drawn from a fixed seed so runs compare."""
    torch.manual_seed(seed)
    return evaluate_loss(model, loader, accelerator)
