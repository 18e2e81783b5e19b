"""Final evaluation of a run: BLEU and chrF of beam-search translations, or perplexity for mlm/clm."""

import sacrebleu
import torch
from accelerate.utils import gather_object

from vaswani.modeling.pipelines import translate
from vaswani.training.arguments import TrainArguments
from vaswani.training.loop import evaluate_loss

EXAMPLES_SHOWN = 5


def corpus_scores(hypotheses: list[str], references: list[str], signatures: bool = False) -> dict:
    """Corpus BLEU and chrF with sacrebleu's defaults (its own 13a tokenization of the detokenized text), one
    reference per hypothesis; with `signatures`, also sacrebleu's signature of each score (`bleu_signature`:
    "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:..."), which papers quote so that scores compare.

    sacrebleu is called directly: `evaluate.load("sacrebleu")` fetches its script from the Hub, which an offline
    machine cannot reach.
    """
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    scores = {
        "bleu": bleu.corpus_score(hypotheses, [references]).score,
        "chrf": chrf.corpus_score(hypotheses, [references]).score,
    }
    if signatures:  # known only once scored (the number of references is part of it)
        scores.update(bleu_signature=str(bleu.get_signature()), chrf_signature=str(chrf.get_signature()))
    return scores


def translation_metrics(model, tokenizer, dataset, args: TrainArguments, accelerator) -> tuple[dict, list[dict]]:
    """`corpus_scores` of the model's beam-search translations of `dataset`, and a few examples."""
    count = len(dataset) if args.max_eval_examples is None else min(len(dataset), args.max_eval_examples)
    sources, references = dataset[args.source_column][:count], dataset[args.target_column][:count]
    model = accelerator.unwrap_model(model).eval()
    with accelerator.split_between_processes(sources) as shard:
        hypotheses = translate(
            model, tokenizer, shard, show_progress=accelerator.is_local_main_process,
            num_beams=args.num_beams, length_penalty=args.length_penalty, max_new_tokens=args.max_length + 50,
        )  # fmt: skip
    hypotheses = gather_object(hypotheses)
    metrics = {**corpus_scores(hypotheses, references, signatures=True), "translated_examples": count}
    examples = [
        {"source": source, "reference": reference, "translation": hypothesis}
        for source, reference, hypothesis in list(zip(sources, references, hypotheses))[:EXAMPLES_SHOWN]
    ]
    return metrics, examples


def language_model_metrics(model, loader, accelerator, seed: int) -> dict:
    """Loss and perplexity on held-out blocks; masked-LM masks are drawn from a fixed seed so runs compare."""
    torch.manual_seed(seed)
    return evaluate_loss(model, loader, accelerator)
