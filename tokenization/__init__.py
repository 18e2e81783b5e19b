from .tokenization_vaswani import SPECIAL_TOKENS, causal_lm_tokenizer, train_tokenizer

__all__ = ["SPECIAL_TOKENS", "causal_lm_tokenizer", "train_tokenizer"]
