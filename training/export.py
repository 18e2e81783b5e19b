"""A Hub-ready folder for any Vaswani model: weights, config with `auto_map`, code, tokenizer, model card.

The folder loads with `AutoModel...from_pretrained(folder_or_repo, trust_remote_code=True)` where `vaswani` is not
installed (transformers imports the code files copied here, byte for byte the tested ones: they import each
other only by single-dot relative imports, which transformers copies along) and with plain `from_pretrained` where it
is (the package registers its classes with the Auto
classes, and local code wins over `auto_map`).
"""

import json
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vaswani.configuration import configuration_vaswani
from vaswani.modeling import modeling_vaswani, pipeline_vaswani
from vaswani.training.hub import code_file_names

CODE_FILES = tuple(Path(module.__file__) for module in (configuration_vaswani, modeling_vaswani, pipeline_vaswani))
CARD_TEMPLATE = Path(__file__).with_name("model_card_template.md")
AUTO_MAP = {
    "AutoConfig": "configuration_vaswani.VaswaniConfig",
    "AutoModel": "modeling_vaswani.VaswaniModel",
    "AutoModelForSeq2SeqLM": "modeling_vaswani.VaswaniForConditionalGeneration",
    "AutoModelForMaskedLM": "modeling_vaswani.VaswaniForMaskedLM",
    "AutoModelForCausalLM": "modeling_vaswani.VaswaniForCausalLM",
    "AutoModelForSequenceClassification": "modeling_vaswani.VaswaniForSequenceClassification",
}
PIPELINE_TAGS = {
    "VaswaniForConditionalGeneration": "translation",
    "VaswaniForMaskedLM": "fill-mask",
    "VaswaniForCausalLM": "text-generation",
    "VaswaniForSequenceClassification": "text-classification",
}
METRIC_NAMES = {"bleu": "BLEU", "chrf": "chrF", "perplexity": "Perplexity", "loss": "Loss", "accuracy": "Accuracy"}


def save_for_hub(
    model,
    tokenizer,
    folder: str | Path,
    metrics: dict | None = None,
    training_arguments=None,
    card: dict | None = None,
    max_shard_size: str = "2GB",
    state_dict: dict | None = None,
) -> Path:
    """Write `model` and `tokenizer` to `folder` as the Hub serves them, with a model card of `metrics`.

    `card` fills the model card: `model_name`, `repo_id`, `language` (list), `datasets` (list), `dataset_name`,
    `eval_split`, `license`, `description`, `data` (sources and licences), `training` (text), `examples` (list of
    dicts) and `plot` (an image file to copy in). Weights are safetensors, sharded above `max_shard_size`; pass
    `state_dict` when `model` is sharded over processes (FSDP, DeepSpeed ZeRO-3): its gathered full weights.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size=max_shard_size, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    config = add_auto_map(
        folder / "config.json", pipeline_vaswani.CUSTOM_PIPELINES if model.config.is_encoder_decoder else None
    )
    for code_file in CODE_FILES:
        if code_file.name in code_file_names(config):  # what a push publishes; no pipeline file for other heads
            shutil.copyfile(code_file, folder / code_file.name)
    metrics = metrics or {}
    (folder / "all_results.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if training_arguments is not None:
        arguments = asdict(training_arguments) if is_dataclass(training_arguments) else dict(training_arguments)
        (folder / "training_args.json").write_text(json.dumps(arguments, indent=2, sort_keys=True))
    card = dict(card or {})
    if card.get("plot"):
        shutil.copyfile(card["plot"], folder / Path(card["plot"]).name)
        card["plot"] = Path(card["plot"]).name
    model_card(model, metrics, card).save(folder / "README.md")
    return folder


def add_auto_map(config_path: Path, custom_pipelines: dict | None = None) -> dict:
    """Name the code files for every Auto class and, for a seq2seq model, the translation pipeline's
    (`pipeline("translation", model=folder, trust_remote_code=True)`); return the config written.
    `register_for_auto_class` cannot: it fails on the modeling file's fallback import of the installed package."""
    config = json.loads(config_path.read_text())
    config["auto_map"] = AUTO_MAP
    if custom_pipelines:
        config["custom_pipelines"] = custom_pipelines
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def model_card(model, metrics: dict, card: dict) -> ModelCard:
    """The card from the package's template, with Hub metadata (YAML) and the measured numbers."""
    architecture = type(model).__name__
    pipeline_tag = PIPELINE_TAGS.get(architecture)
    dataset_name = card.get("dataset_name", "unspecified")
    eval_results = [
        EvalResult(
            task_type=pipeline_tag or "other", dataset_type=dataset_name, dataset_name=dataset_name,
            dataset_split=card.get("eval_split", "test"), metric_type=name, metric_name=METRIC_NAMES[name],
            metric_value=round(float(value), 2),
        )  # fmt: skip
        for name, value in metrics.items()
        if name in METRIC_NAMES
    ]
    card_data = ModelCardData(
        model_name=card.get("model_name", "vaswani-model"),
        language=card.get("language"),
        license=card.get("license", "apache-2.0"),
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["vaswani", "transformer", "attention-is-all-you-need", "custom_code"],
        datasets=card.get("datasets"),
        eval_results=eval_results or None,
    )
    config = model.config
    return ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        architecture=architecture,
        model_name=card_data.model_name,
        parameters=f"{sum(parameter.numel() for parameter in model.parameters()):,}",
        config=config,
        # A "|" in a text value (sacreBLEU's signatures) would end the Markdown table cell.
        metrics={METRIC_NAMES.get(name, name): value.replace("|", "\\|") if isinstance(value, str) else value
                 for name, value in metrics.items()},  # fmt: skip
        description=card.get("description", ""),
        data=card.get("data"),
        training=card.get("training", ""),
        examples=card.get("examples", []),
        plot=card.get("plot"),
        repo_id=card.get("repo_id", "path/to/this/folder"),
    )
