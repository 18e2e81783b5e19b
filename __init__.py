"""vaswani: the Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a transformers model family.

Importing the package registers every class with transformers' Auto classes, so plain
`AutoModelForSeq2SeqLM.from_pretrained(folder)` works for a Vaswani checkpoint wherever `vaswani` is installed.
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

AutoConfig.register(VaswaniConfig.model_type, VaswaniConfig, exist_ok=True)
for auto_class, model_class in (
    (AutoModel, VaswaniModel),
    (AutoModelForSeq2SeqLM, VaswaniForConditionalGeneration),
    (AutoModelForMaskedLM, VaswaniForMaskedLM),
    (AutoModelForCausalLM, VaswaniForCausalLM),
    (AutoModelForSequenceClassification, VaswaniForSequenceClassification),
):
    auto_class.register(VaswaniConfig, model_class, exist_ok=True)

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
]
