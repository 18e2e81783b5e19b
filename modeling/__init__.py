from .modeling_vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    VaswaniModel,
    VaswaniPreTrainedModel,
)

__all__ = [
    "VaswaniPreTrainedModel",
    "VaswaniModel",
    "VaswaniForConditionalGeneration",
    "VaswaniForMaskedLM",
    "VaswaniForCausalLM",
    "VaswaniForSequenceClassification",
]
