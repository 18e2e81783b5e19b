"""`pipeline("translation")` for encoder-decoder models, which transformers 5 no longer provides.

- Where `vaswani` is imported, `register_translation_pipeline()` has run: `pipeline("translation", model=model,
  tokenizer=tokenizer)` builds `VaswaniTranslationPipeline` for a model in memory (a Vaswani model, or any other
  seq2seq model such as Marian).
- An exported checkpoint carries this file and names it in its config's `custom_pipelines`, so
  `pipeline("translation", model=folder_or_repo, trust_remote_code=True)` works where `vaswani` is not installed.

This file is copied into checkpoints, where `vaswani` may not be installed: it imports nothing of ours.
"""

from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers import pipelines as transformers_pipelines


TASK = "translation"
# §6.1: "We set the maximum output length during inference to input length + 50".
EXTRA_OUTPUT_TOKENS = 50
# The `custom_pipelines` entry of an exported seq2seq checkpoint's config.json, as Pipeline.save_pretrained writes it.
CUSTOM_PIPELINES = {
    TASK: {"impl": "pipeline_vaswani.VaswaniTranslationPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
}


def with_default_length(model, generate_kwargs: dict, source_length: int) -> dict:
    """`generate_kwargs` with the paper's output limit, source length + 50 (§6.1), unless the call or the model's
    generation config sets a length (generate()'s own default, 20 tokens in all, would cut translations short)."""
    length_fields = {"max_length", "max_new_tokens"}
    generation_config = generate_kwargs.get("generation_config", model.generation_config)
    if length_fields & generate_kwargs.keys() or length_fields & generation_config.to_diff_dict().keys():
        return generate_kwargs
    return {**generate_kwargs, "max_new_tokens": source_length + EXTRA_OUTPUT_TOKENS}


class VaswaniTranslationPipeline(Pipeline):
    """Text in, `[{"translation_text": ...}]` out, by `model.generate()`; options like `num_beams=4` pass on."""

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError(
                f"The translation pipeline needs an encoder-decoder model, not {type(self.model).__name__}: use "
                "VaswaniForConditionalGeneration (AutoModelForSeq2SeqLM)."
            )
        check_tokenizer = getattr(self.model.config, "check_tokenizer", None)  # VaswaniConfig's, if the model has it
        if check_tokenizer is not None:
            check_tokenizer(self.tokenizer)

    def _sanitize_parameters(self, truncation=None, clean_up_tokenization_spaces=None, **generate_kwargs):
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {}
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, generate_kwargs, postprocess_params

    def __call__(self, texts: str | list[str], **kwargs):
        """Translate a string (a list of one dict per returned sequence) or a list of strings (one dict each, or a
        list of dicts each with `num_return_sequences`), as transformers 4's TranslationPipeline did."""
        results = super().__call__(texts, **kwargs)
        if isinstance(texts, list) and all(len(result) == 1 for result in results):
            return [result[0] for result in results]
        return results

    def preprocess(self, text: str, truncation: bool = True):
        return self.tokenizer(text, return_tensors="pt", truncation=truncation)

    def _forward(self, model_inputs, **generate_kwargs):
        batch_size, source_length = model_inputs["input_ids"].shape
        generate_kwargs = with_default_length(self.model, generate_kwargs, source_length)
        output_ids = self.model.generate(**model_inputs, **generate_kwargs)
        # (batch * sequences, length) -> (batch, sequences, length): the pipeline splits batches along dim 0.
        return {"output_ids": output_ids.reshape(batch_size, -1, output_ids.shape[-1])}

    def postprocess(self, model_outputs, clean_up_tokenization_spaces: bool = False):
        texts = self.tokenizer.batch_decode(
            model_outputs["output_ids"][0],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
        return [{"translation_text": text} for text in texts]


def register_translation_pipeline() -> None:
    """Make `pipeline("translation")` build `VaswaniTranslationPipeline`; repeated calls change nothing."""
    # transformers 5 lists "translation" as removed and raises before it reads the registry; we provide the task again.
    getattr(transformers_pipelines, "REMOVED_TASKS", {}).pop(TASK, None)
    registry = transformers_pipelines.PIPELINE_REGISTRY
    if registry.supported_tasks.get(TASK, {}).get("impl") is not VaswaniTranslationPipeline:
        registry.register_pipeline(TASK, VaswaniTranslationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text")


__all__ = ["CUSTOM_PIPELINES", "VaswaniTranslationPipeline", "register_translation_pipeline", "with_default_length"]
