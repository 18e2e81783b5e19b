"""The tokenizer and the model of a run: loaded, trained, or warm-started from other views' checkpoints."""

from transformers import AutoTokenizer

from vaswani.configuration import VaswaniConfig
from vaswani.modeling import VaswaniForCausalLM, VaswaniForConditionalGeneration, VaswaniForMaskedLM
from vaswani.tokenization import causal_lm_tokenizer, train_tokenizer
from vaswani.training.arguments import TrainArguments

MODEL_CLASSES = {"seq2seq": VaswaniForConditionalGeneration, "mlm": VaswaniForMaskedLM, "clm": VaswaniForCausalLM}


def tokenizer_texts(dataset, args: TrainArguments):
    """The training texts the vocabulary is learned from: both languages of a pair (one shared vocabulary, §5.1)."""
    train = dataset["train"]
    if args.objective == "seq2seq":
        pairs = train.select_columns([args.source_column, args.target_column])
        return (text for example in pairs for text in example.values())
    return train[args.text_column]


def build_tokenizer(args: TrainArguments, dataset):
    """The tokenizer named by --tokenizer, or one trained here on the training split."""
    if args.tokenizer is not None:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    return train_tokenizer(tokenizer_texts(dataset, args), vocab_size=args.vocab_size, model_max_length=args.max_length)


def tokenizer_for_data(tokenizer, objective: str):
    """Causal-LM training text is `<s> A </s>`, so that the model learns where a text ends."""
    return causal_lm_tokenizer(tokenizer, add_eos_token=True) if objective == "clm" else tokenizer


def tokenizer_to_save(tokenizer, objective: str):
    """A causal LM is saved with the prompt tokenizer (`<s> A`, left padding) that generate() and pipelines need."""
    return causal_lm_tokenizer(tokenizer) if objective == "clm" else tokenizer


def model_config(args: TrainArguments, tokenizer) -> VaswaniConfig:
    return VaswaniConfig.from_tokenizer(
        tokenizer,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=args.ffn_dim,
        decoder_ffn_dim=args.ffn_dim,
        dropout=args.dropout,
        label_smoothing=args.label_smoothing,
        max_position_embeddings=max(args.max_length, 512),
    )


def build_model(args: TrainArguments, tokenizer):
    """A new model of the objective's view, or one loaded from --init-model, or warm-started stacks."""
    model_class = MODEL_CLASSES[args.objective]
    if args.init_encoder or args.init_decoder:
        model = warm_start(args.init_encoder, args.init_decoder, label_smoothing=args.label_smoothing)
    elif args.init_model:
        model = model_class.from_pretrained(args.init_model, label_smoothing=args.label_smoothing)
    else:
        model = model_class(model_config(args, tokenizer))
    model.config.check_tokenizer(tokenizer)
    return model


def warm_start(encoder_checkpoint: str | None, decoder_checkpoint: str | None, **config_overrides):
    """A translation model whose encoder comes from a masked-LM checkpoint and whose decoder comes from a
    causal-LM checkpoint: the views share parameter names, so only cross-attention starts new.

    The shared embedding comes from the decoder's checkpoint when there is one (it is tied to the output
    projection, which predicts the target language), else from the encoder's.
    """
    if encoder_checkpoint is None and decoder_checkpoint is None:
        raise ValueError("warm_start needs an encoder checkpoint, a decoder checkpoint, or both.")
    base = VaswaniForConditionalGeneration.from_pretrained(encoder_checkpoint or decoder_checkpoint, **config_overrides)
    if encoder_checkpoint and decoder_checkpoint:
        decoder_source = VaswaniForCausalLM.from_pretrained(decoder_checkpoint)
        check_same_architecture(base.config, decoder_source.config, decoder_checkpoint)
        missing, unexpected = base.model.decoder.load_state_dict(decoder_source.model.decoder.state_dict(), strict=False)
        if unexpected or any("cross_attn" not in key for key in missing):
            raise ValueError(f"{decoder_checkpoint} does not fit this decoder: missing {missing}, unexpected {unexpected}")
        base.model.shared.weight.data.copy_(decoder_source.model.shared.weight.data)
    return base


def check_same_architecture(config: VaswaniConfig, other: VaswaniConfig, checkpoint: str) -> None:
    fields = ("vocab_size", "d_model", "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim",
              "layer_norm_position", "position_embedding_type", "activation_function")  # fmt: skip
    different = [name for name in fields if getattr(config, name) != getattr(other, name)]
    if different:
        raise ValueError(
            f"{checkpoint} has another architecture than the encoder checkpoint: " + ", ".join(
                f"{name} {getattr(other, name)} vs {getattr(config, name)}" for name in different
            )
        )
