"""Fine-tune a translation model with transformers' `Seq2SeqTrainer`, scored by BLEU on generated translations.

    python -m vaswani.training.finetune_translation                                     # a small new model
    python -m vaswani.training.finetune_translation --model outputs/vaswani-en-es/model  # continue a checkpoint
    python -m vaswani.training.finetune_translation --max_tokens 1024                    # token-count batches

With `--model` (any seq2seq checkpoint with its tokenizer, e.g. the `model/` folder `vaswani-train` writes) the
example fine-tunes it; without, it trains a shared vocabulary and initialises a small model, so that it runs
anywhere in minutes. Data: the embedded English -> Spanish verse pairs, split by whole books.

How our model meets the Trainer, exactly as a built-in one does:
- `DataCollatorForSeq2Seq(tokenizer, model=model)` pads labels with -100 and builds `decoder_input_ids` with the
  model's `prepare_decoder_input_ids_from_labels`.
- The Trainer passes `num_items_in_batch` (the labelled tokens of the whole accumulated batch) to `forward`, which
  divides its summed loss by it: gradient accumulation weights every token equally.
- Label smoothing (§5.4, 0.1) is the Trainer's `label_smoothing_factor`, a training choice as for any transformers
  model: the model's own `loss` is plain cross-entropy (`config.label_smoothing` defaults to 0). The Trainer's
  smoother takes the labels away from the model, so a checkpoint saved with `label_smoothing` set never smooths twice.
- `predict_with_generate=True` evaluates with `model.generate()`; `compute_metrics` scores with sacrebleu.
- `--max_tokens N` batches by tokens, as `vaswani-train --max-tokens` and the paper (§5.1) do:
  `TokenBatchSeq2SeqTrainer` packs examples of similar length into batches of at most N source and N target tokens
  (padding included) per process, for training and evaluation, instead of `--batch_size` pairs grouped by length.
"""

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from vaswani.configuration import VaswaniConfig
from vaswani.modeling import VaswaniForConditionalGeneration
from vaswani.tokenization import train_tokenizer
from vaswani.training.corpus import load_parallel_corpus
from vaswani.training.data import tokenize_pairs
from vaswani.training.evaluation import corpus_scores
from vaswani.training.export import save_for_hub
from vaswani.training.trainer_batching import TokenBatchSeq2SeqTrainer


@dataclass
class TranslationOptions:
    """Options of the example (`--help` prints these descriptions)."""

    model: str | None = field(default=None, metadata={"help": "A seq2seq checkpoint. Default: a small new model."})
    output_dir: str = field(default="outputs/vaswani-finetune-en-es", metadata={"help": "Where everything is written."})
    source: str = field(default="en", metadata={"help": "Source column: en or es."})
    target: str = field(default="es", metadata={"help": "Target column: es or en."})
    max_steps: int = field(default=1000, metadata={"help": "Optimiser steps."})
    batch_size: int = field(default=32, metadata={"help": "Pairs per step (without --max_tokens)."})
    max_tokens: int | None = field(
        default=None,
        metadata={"help": "Token-count batches: at most N source and N target tokens per batch, padding included."},
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (inverse square-root decay)."})
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    max_length: int = field(default=64, metadata={"help": "Tokens kept per source and target."})
    eval_steps: int = field(default=500, metadata={"help": "Evaluate BLEU on the validation books every N steps."})
    max_eval_examples: int = field(default=100, metadata={"help": "Validation pairs translated at each evaluation."})
    num_beams: int = field(default=4, metadata={"help": "Beam size of the evaluation translations (the paper's: 4)."})
    vocab_size: int = field(default=4000, metadata={"help": "New model only: size of the shared vocabulary."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation and shuffling."})


def new_model_and_tokenizer(corpus: DatasetDict, options: TranslationOptions):
    """A shared vocabulary (§5.1) of both languages' training text, and a small model for it."""
    pairs = corpus["train"].select_columns([options.source, options.target])
    texts = (text for pair in pairs for text in pair.values())
    tokenizer = train_tokenizer(texts, options.vocab_size, model_max_length=options.max_length, show_progress=False)
    config = VaswaniConfig.from_tokenizer(
        tokenizer, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, max_position_embeddings=512,
    )  # fmt: skip
    return VaswaniForConditionalGeneration(config), tokenizer


def bleu_metrics(tokenizer):
    """Trainer's `compute_metrics`: corpus BLEU and chrF (`corpus_scores`) of the generated translations."""

    def compute_metrics(evaluation: EvalPrediction) -> dict[str, float]:
        predictions = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
        # Both arrays are padded with -100 where a sequence ended early.
        predictions = np.where(predictions == -100, tokenizer.pad_token_id, predictions)
        labels = np.where(evaluation.label_ids == -100, tokenizer.pad_token_id, evaluation.label_ids)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return corpus_scores(hypotheses, references)

    return compute_metrics


def training_arguments(options: TranslationOptions) -> Seq2SeqTrainingArguments:
    return Seq2SeqTrainingArguments(
        output_dir=str(Path(options.output_dir) / "trainer"), max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=options.batch_size,
        learning_rate=options.learning_rate, lr_scheduler_type="inverse_sqrt", warmup_steps=options.warmup_steps,
        adam_beta2=0.98, adam_epsilon=1e-9,  # the paper's Adam (§5.3)
        label_smoothing_factor=0.1,  # the paper's (§5.4); the model's own loss is plain cross-entropy
        predict_with_generate=True, generation_num_beams=options.num_beams,
        generation_max_length=options.max_length + 50,  # §6.1: output length up to input length + 50
        eval_strategy="steps", eval_steps=options.eval_steps, logging_steps=max(1, options.eval_steps // 10),
        save_strategy="no", report_to="none", seed=options.seed, train_sampling_strategy="group_by_length",
    )  # fmt: skip


def seq2seq_trainer(options: TranslationOptions, model, tokenizer, train, validation) -> Seq2SeqTrainer:
    """The example's `Seq2SeqTrainer`: on token-count batches with `--max_tokens`, else `--batch_size` pairs."""
    common = dict(
        model=model, args=training_arguments(options), train_dataset=train, eval_dataset=validation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
        compute_metrics=bleu_metrics(tokenizer),
    )  # fmt: skip
    if options.max_tokens is None:
        return Seq2SeqTrainer(**common)
    return TokenBatchSeq2SeqTrainer(**common, max_tokens=options.max_tokens)


def finetune(options: TranslationOptions) -> dict[str, float]:
    """Train, score the test books (before too, for a given --model), export; returns the test scores."""
    corpus = load_parallel_corpus().select_columns([options.source, options.target])
    if options.model:
        model = AutoModelForSeq2SeqLM.from_pretrained(options.model)
        tokenizer = AutoTokenizer.from_pretrained(options.model)
    else:
        model, tokenizer = new_model_and_tokenizer(corpus, options)
    data = tokenize_pairs(corpus, tokenizer, options.source, options.target, options.max_length)
    validation = data["validation"].select(range(min(options.max_eval_examples, len(data["validation"]))))
    trainer = seq2seq_trainer(options, model, tokenizer, data["train"], validation)
    scores = {}
    if options.model:  # a new model scores 0 before training: no need to translate with it
        scores["bleu_before"] = trainer.evaluate(data["test"], metric_key_prefix="test")["test_bleu"]
    trainer.train()
    after = trainer.evaluate(data["test"], metric_key_prefix="test")
    scores.update(bleu=after["test_bleu"], chrf=after["test_chrf"])
    card = {
        "model_name": f"vaswani-finetuned-{options.source}-{options.target}",
        "language": [options.source, options.target],
        "dataset_name": "bible-en-es",
        "description": f"A {options.source} -> {options.target} translation model fine-tuned with Seq2SeqTrainer.",
        "training": f"`python -m vaswani.training.finetune_translation` with {asdict(options)}.",
    }
    save_for_hub(trainer.model, tokenizer, Path(options.output_dir) / "model", scores, card=card)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(TranslationOptions, prog="python -m vaswani.training.finetune_translation")
    (options,) = parser.parse_args_into_dataclasses(args=argv)
    scores = finetune(options)
    before = f" (before: {scores['bleu_before']:.2f})" if "bleu_before" in scores else ""
    print(f"Test books: BLEU {scores['bleu']:.2f}{before}, chrF {scores['chrf']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
