"""Fine-tune a masked-LM checkpoint into a verse classifier with transformers' `Trainer`: Old or New Testament?

    python -m vaswani.training.finetune_classification                            # pretrains a small MLM first
    python -m vaswani.training.finetune_classification --model outputs/mlm/model  # your masked-LM checkpoint

Without `--model` the example first pretrains a small encoder with `vaswani.training.run` (objective mlm, the
embedded English corpus), as `vaswani-train --objective mlm --output-dir OUTPUT_DIR/mlm` would.

Data: the English side of the embedded corpus, labelled 1 for a New Testament verse. The splits are whole books
(validation: Ruth, Hosea, Philippians, III John; test: Judges, Proverbs, Daniel, Nahum, Ephesians, Titus, II John),
none of which the masked LM was pretrained on, so no verse of an evaluated book, nor a near-duplicate of one, is
trained on. Three training verses in four are Old Testament (nine test verses in ten), so the report sets accuracy
and F1 beside the majority-class baseline.

Everything else is plain transformers: `AutoModelForSequenceClassification.from_pretrained` on the masked-LM
checkpoint (the encoder loads, the classifier head starts new), `DataCollatorWithPadding`, `Trainer`.
"""

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from vaswani.training.arguments import TrainArguments
from vaswani.training.corpus import load_parallel_corpus
from vaswani.training.export import save_for_hub
from vaswani.training.run import run

LABELS = ["old", "new"]  # label id = index: 1 is a New Testament verse


@dataclass
class ClassificationOptions:
    """Options of the example (`--help` prints these descriptions)."""

    model: str | None = field(default=None, metadata={"help": "A masked-LM checkpoint. Default: pretrain one here."})
    output_dir: str = field(default="outputs/vaswani-testament", metadata={"help": "Where everything is written."})
    pretrain_steps: int = field(default=600, metadata={"help": "Masked-LM steps when no --model is given."})
    max_steps: int = field(default=400, metadata={"help": "Fine-tuning steps."})
    batch_size: int = field(default=32, metadata={"help": "Verses per step."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate (linear decay after warm-up)."})
    max_length: int = field(default=64, metadata={"help": "Tokens kept per verse."})
    eval_steps: int = field(default=100, metadata={"help": "Evaluate on the validation books every N steps."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation and shuffling."})


def pretrain_masked_lm(options: ClassificationOptions) -> Path:
    """A small encoder pretrained as a masked LM on the English corpus (its train split holds no evaluated book)."""
    arguments = TrainArguments(
        objective="mlm", output_dir=str(Path(options.output_dir) / "mlm"), vocab_size=4000,
        max_length=options.max_length, d_model=128, layers=2, heads=4, ffn_dim=512, max_steps=options.pretrain_steps,
        batch_size=options.batch_size, warmup_steps=min(100, options.pretrain_steps), eval_steps=options.pretrain_steps,
        save_steps=options.pretrain_steps, pretrain_steps=0, seed=options.seed,
    )  # fmt: skip
    return run(arguments).model_dir


def testament_dataset(tokenizer, max_length: int) -> DatasetDict:
    """English verses as `input_ids` with `labels` 0 (Old Testament) or 1 (New), split by whole books."""
    corpus = load_parallel_corpus().select_columns(["en", "testament"])

    def encode(batch):
        encoded = tokenizer(batch["en"], truncation=True, max_length=max_length)
        encoded["labels"] = [LABELS.index(testament) for testament in batch["testament"]]
        return encoded

    return corpus.map(encode, batched=True, remove_columns=["en", "testament"], desc="Tokenizing verses")


def classification_scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 of the New Testament class (label 1) and macro F1 (the mean over both classes).

    Computed here: `evaluate.load("accuracy")` fetches its script from the Hub, which an offline machine cannot reach.
    """
    f1_per_class = []
    for label in (0, 1):
        true_positives = np.sum((predictions == label) & (labels == label))
        predicted, actual = np.sum(predictions == label), np.sum(labels == label)
        f1_per_class.append(2 * true_positives / (predicted + actual) if predicted + actual else 0.0)
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "f1": float(f1_per_class[1]),
        "macro_f1": float(np.mean(f1_per_class)),
    }


def compute_metrics(evaluation: EvalPrediction) -> dict[str, float]:
    """Trainer's hook: scores of the argmax class."""
    logits = evaluation.predictions[0] if isinstance(evaluation.predictions, tuple) else evaluation.predictions
    return classification_scores(np.argmax(logits, axis=-1), evaluation.label_ids)


def majority_baseline(train_labels, eval_labels) -> dict[str, float]:
    """The scores of always answering the most frequent training label."""
    majority = np.bincount(np.asarray(train_labels)).argmax()
    return classification_scores(np.full(len(eval_labels), majority), np.asarray(eval_labels))


def training_arguments(options: ClassificationOptions) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(Path(options.output_dir) / "trainer"), max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size, per_device_eval_batch_size=4 * options.batch_size,
        learning_rate=options.learning_rate, warmup_steps=max(1, options.max_steps // 10), weight_decay=0.01,
        eval_strategy="steps", eval_steps=options.eval_steps, logging_steps=max(1, options.eval_steps // 4),
        save_strategy="no", report_to="none", seed=options.seed, train_sampling_strategy="group_by_length",
    )  # fmt: skip


def finetune(options: ClassificationOptions) -> dict[str, float]:
    """Pretrain (without --model), fine-tune, evaluate on the test books, export; returns the test scores with the
    majority baseline's (`baseline_*`)."""
    checkpoint = options.model or str(pretrain_masked_lm(options))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    label_names = {"id2label": dict(enumerate(LABELS)), "label2id": {label: i for i, label in enumerate(LABELS)}}
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=len(LABELS), **label_names)
    data = testament_dataset(tokenizer, options.max_length)
    trainer = Trainer(
        model=model, args=training_arguments(options), train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
    )  # fmt: skip
    trainer.train()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    scores = {name: test[f"test_{name}"] for name in ("accuracy", "f1", "macro_f1")}
    baseline = majority_baseline(data["train"]["labels"], data["test"]["labels"])
    scores.update({f"baseline_{name}": value for name, value in baseline.items()})
    card = {
        "model_name": "vaswani-testament-classifier",
        "dataset_name": "bible-en",
        "description": "Classifies an English Bible verse as Old or New Testament; fine-tuned from a masked LM.",
        "training": f"`python -m vaswani.training.finetune_classification` with {asdict(options)}.",
    }
    save_for_hub(trainer.model, tokenizer, Path(options.output_dir) / "model", scores, card=card)
    return scores


def report(scores: dict[str, float]) -> str:
    rows = [f"{'test books':<24}{'accuracy':>10}{'F1 (new)':>10}{'macro F1':>10}"]
    for name, prefix in (("fine-tuned", ""), ("majority class (old)", "baseline_")):
        values = [scores[prefix + metric] for metric in ("accuracy", "f1", "macro_f1")]
        rows.append(f"{name:<24}" + "".join(f"{value:>10.3f}" for value in values))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser(ClassificationOptions, prog="python -m vaswani.training.finetune_classification")
    (options,) = parser.parse_args_into_dataclasses(args=argv)
    print(report(finetune(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
