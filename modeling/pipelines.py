"""Translation with a seq2seq Vaswani model: `translate`, a batched helper around `generate()`."""

import torch
from tqdm.auto import tqdm

from vaswani.modeling.pipeline_vaswani import with_default_length


def translate(
    model, tokenizer, texts: list[str] | str, batch_size: int = 32, show_progress: bool = False, **generate_kwargs
) -> list[str] | str:
    """Translate `texts` (a string or a list) with `model.generate(**generate_kwargs)`, e.g. `num_beams=4`.

    Texts are batched by length (less padding, faster) and returned in their original order. Without a length in
    `generate_kwargs` (or the model's generation config) outputs stop at the paper's limit, input length + 50 (§6.1).
    """
    model.config.check_tokenizer(tokenizer)
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    translations = [""] * len(texts)
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc="Translating", disable=not show_progress):
        indices = order[start : start + batch_size]
        inputs = tokenizer([texts[index] for index in indices], return_tensors="pt", padding=True, truncation=True)
        batch_kwargs = with_default_length(model, generate_kwargs, inputs["input_ids"].shape[1])
        with torch.inference_mode():
            generated = model.generate(**inputs.to(model.device), **batch_kwargs)
        for index, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            translations[index] = text
    return translations[0] if single else translations
