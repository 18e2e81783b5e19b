"""PEFT defaults for the Vaswani family: the modules LoRA adapts when `LoraConfig` names none.

PEFT looks a model's default `target_modules` up by `config.model_type` in
`peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`, a table of built-in model types with no
registration function; `LoraModel` reads that same dict object, so adding our entry to it is the whole
registration. Importing `vaswani` calls `register_peft_target_modules()` when PEFT is installed.

Default: every attention input projection, the fused self-attention `qkv_proj` of encoder and decoder and the
cross-attention `q_proj` and `kv_proj`: LoRA's paper adapts W_q and W_v, which the fused matrices hold (as GPT-2's
`c_attn` default does). `out_proj` is left out because the classifier head has a module of that name too. For more,
name modules yourself: `target_modules=[*LORA_TARGET_MODULES, "out_proj", "fc1", "fc2"]`, or `"all-linear"`.
"""

from vaswani.configuration import VaswaniConfig

LORA_TARGET_MODULES = ["qkv_proj", "q_proj", "kv_proj"]


def register_peft_target_modules() -> bool:
    """Declare `LORA_TARGET_MODULES` as LoRA's default for `model_type="vaswani"`; False when PEFT is not installed.

    LoRA and the mixed-adapter model read this table; PEFT's other methods (LoHa, LoKr, ...) copied it when PEFT was
    imported, so give them `target_modules=LORA_TARGET_MODULES` explicitly.
    """
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    except ImportError:
        return False
    TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault(VaswaniConfig.model_type, list(LORA_TARGET_MODULES))
    return True


__all__ = ["LORA_TARGET_MODULES", "register_peft_target_modules"]
