"""vaswani: the Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model family.

Importing the package registers every class with transformers' Auto classes, so plain
`AutoModelForSeq2SeqLM.from_pretrained(folder)` works for a Vaswani checkpoint wherever `vaswani` is installed; it
also provides `pipeline("translation")` again (transformers 5 removed it) and declares LoRA's default target
modules to PEFT when PEFT is installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

# Absolute imports: pytest also imports this file as the package of the repository root, under another name.
from vaswani.configuration import VaswaniConfig
from vaswani.tokenization import causal_lm_tokenizer, train_tokenizer
from vaswani.modeling import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    VaswaniModel,
    VaswaniPreTrainedModel,
)
from vaswani.modeling.adapters import LORA_TARGET_MODULES, register_peft_target_modules
from vaswani.modeling.attention_maps import attention_maps, plot_attention
from vaswani.modeling.pipeline_vaswani import VaswaniTranslationPipeline, register_translation_pipeline
from vaswani.modeling.pipelines import translate

AutoConfig.register(VaswaniConfig.model_type, VaswaniConfig, exist_ok=True)
for auto_class, model_class in (
    (AutoModel, VaswaniModel),
    (AutoModelForSeq2SeqLM, VaswaniForConditionalGeneration),
    (AutoModelForMaskedLM, VaswaniForMaskedLM),
    (AutoModelForCausalLM, VaswaniForCausalLM),
    (AutoModelForSequenceClassification, VaswaniForSequenceClassification),
):
    auto_class.register(VaswaniConfig, model_class, exist_ok=True)
register_translation_pipeline()
register_peft_target_modules()


def __getattr__(name: str):
    """`vaswani.save_for_hub`, `vaswani.push_folder` and the token-batch Trainers (`vaswani.TokenBatchTrainer`,
    `vaswani.TokenBatchSeq2SeqTrainer`) load the training package (accelerate, datasets) on first use;
    `vaswani.export_ctranslate2` loads CTranslate2 (an optional extra) on first use."""
    if name == "save_for_hub":
        from vaswani.training.export import save_for_hub

        return save_for_hub
    if name == "push_folder":
        from vaswani.training.hub import push_folder

        return push_folder
    if name in ("TokenBatchTrainer", "TokenBatchSeq2SeqTrainer"):
        from vaswani.training import trainer_batching

        return getattr(trainer_batching, name)
    if name == "export_ctranslate2":
        from vaswani.modeling.ctranslate2_export import export_ctranslate2

        return export_ctranslate2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VaswaniConfig",
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniForMaskedLM",
    "VaswaniForCausalLM",
    "VaswaniForSequenceClassification",
    "train_tokenizer",
    "causal_lm_tokenizer",
    "translate",
    "VaswaniTranslationPipeline",
    "attention_maps",
    "plot_attention",
    "LORA_TARGET_MODULES",
    "save_for_hub",
    "push_folder",
    "TokenBatchTrainer",
    "TokenBatchSeq2SeqTrainer",
    "export_ctranslate2",
]
