"""PEFT: LoRA on every head with the family's default target modules; an adapter trains, saves and reloads exactly."""

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments, default_data_collator

from conftest import random_ids, tiny_config
from vaswani import (
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
)
from vaswani.modeling.adapters import LORA_TARGET_MODULES

# The task type PEFT wraps each head with; the masked LM has none, and PEFT's plain PeftModel serves it.
TASK_TYPES = {
    VaswaniForConditionalGeneration: TaskType.SEQ_2_SEQ_LM,
    VaswaniForMaskedLM: None,
    VaswaniForCausalLM: TaskType.CAUSAL_LM,
    VaswaniForSequenceClassification: TaskType.SEQ_CLS,
}
HEADS = list(TASK_TYPES)


def batch_for(model_class) -> dict:
    """A fixed batch with labels: copy the input (LMs), or a class per sequence."""
    input_ids = random_ids(4, 6, generator_seed=1)
    if model_class is VaswaniForSequenceClassification:
        return {"input_ids": input_ids, "labels": torch.tensor([0, 1, 1, 0])}
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def lora_model(model_class, save_base_to=None, **lora_options):
    """A new head wrapped for LoRA with the default target modules; its base weights saved first if asked."""
    torch.manual_seed(0)
    base = model_class(tiny_config())
    if save_base_to is not None:
        base.save_pretrained(save_base_to)
    config = LoraConfig(task_type=TASK_TYPES[model_class], r=4, lora_alpha=8, **lora_options)
    return get_peft_model(base, config)


def adapted_modules(model) -> set[str]:
    adapted = {name for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    return {name.removeprefix("base_model.model.") for name in adapted}


def train_steps(model, batch, steps: int = 8) -> list[float]:
    optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_defaults_are_the_attention_input_projections():
    model = lora_model(VaswaniForConditionalGeneration)
    assert model.peft_config["default"].target_modules == set(LORA_TARGET_MODULES)
    per_layer = {
        "encoder": ["self_attn.qkv_proj"],
        "decoder": ["self_attn.qkv_proj", "cross_attn.q_proj", "cross_attn.kv_proj"],
    }
    expected = {
        f"model.{stack}.layers.{layer}.{module}"
        for stack, modules in per_layer.items()
        for layer in range(2)
        for module in modules
    }
    assert adapted_modules(model) == expected


@pytest.mark.parametrize("model_class", HEADS)
def test_lora_trains_saves_and_reloads_exactly(model_class, tmp_path):
    model = lora_model(model_class, save_base_to=tmp_path / "base")
    base_before = {
        name: value.clone()
        for name, value in model.base_model.model.state_dict().items()
        if "lora_" not in name and "modules_to_save" not in name
    }
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    batch = batch_for(model_class)

    losses = train_steps(model, batch)
    assert losses[-1] < 0.8 * losses[0], losses
    base_after = {name: value for name, value in model.base_model.model.state_dict().items() if name in base_before}
    for name, value in base_before.items():  # LoRA leaves the pretrained weights alone
        torch.testing.assert_close(base_after[name], value, rtol=0, atol=0, msg=name)

    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    base = model_class.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    inputs = {"input_ids": batch["input_ids"]}
    if model_class is VaswaniForConditionalGeneration:
        inputs["decoder_input_ids"] = batch["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
        untrained = model_class.from_pretrained(tmp_path / "base").eval()(**inputs).logits
        assert not torch.allclose(untrained, model(**inputs).logits)  # the adapter (and head) changed the outputs


def test_classification_adapter_saves_the_new_classifier_and_skips_lora_in_it(tmp_path):
    model = lora_model(VaswaniForSequenceClassification, target_modules=[*LORA_TARGET_MODULES, "out_proj"])
    assert not any(name.startswith("classifier") for name in adapted_modules(model))  # modules_to_save guards it
    assert "model.encoder.layers.0.self_attn.out_proj" in adapted_modules(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("classifier" in name for name in saved)
    assert all("lora_" in name or "classifier" in name for name in saved)


@pytest.mark.parametrize("model_class", [VaswaniForConditionalGeneration, VaswaniForCausalLM])
def test_lora_models_generate_as_their_merged_weights(model_class):
    model = lora_model(model_class)
    train_steps(model, batch_for(model_class), steps=3)
    model.eval()
    prompt = random_ids(2, 5, generator_seed=2)
    generated = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    merged = model.merge_and_unload().eval()
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    assert torch.equal(merged.generate(input_ids=prompt, max_new_tokens=4, do_sample=False), generated)


def test_trainer_trains_a_lora_classifier(tmp_path):
    model = lora_model(VaswaniForSequenceClassification)
    features = [{"input_ids": ids.tolist(), "labels": int(ids[0] % 2)} for ids in random_ids(16, 6, generator_seed=3)]
    arguments = TrainingArguments(
        tmp_path, max_steps=12, per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
    )  # fmt: skip
    trainer = Trainer(model=model, args=arguments, train_dataset=features, data_collator=default_data_collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]

