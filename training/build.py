"""The tokenizer and the model of a run: loaded, trained, or warm-started from other views' checkpoints."""

from pathlib import Path

from datasets import Dataset, DatasetDict, IterableDataset
from transformers import AutoTokenizer

from vaswani.configuration import VaswaniConfig
from vaswani.modeling import VaswaniForCausalLM, VaswaniForConditionalGeneration, VaswaniForMaskedLM
from vaswani.tokenization import causal_lm_tokenizer, train_tokenizer
from vaswani.configuration.errors import InputError
from vaswani.configuration.files import weights_problem
from vaswani.training.arguments import TrainArguments
from vaswani.training.checkpoints import checkpoint_tokenizer

MODEL_CLASSES = {"seq2seq": VaswaniForConditionalGeneration, "mlm": VaswaniForMaskedLM, "clm": VaswaniForCausalLM}


def tokenizer_training_data(dataset, sample: int | None, seed: int):
    """The dataset the vocabulary is learned from: with --tokenizer-sample N, N training examples drawn by --seed (a
    BPE vocabulary of 37000 barely changes beyond a few hundred thousand sentences, and WMT14 has 4.5 million pairs).
    From a stream (--streaming), the first N examples: drawing at random would mean reading all of it."""
    if isinstance(dataset["train"], IterableDataset):
        if sample is None:
            return dataset  # --tokenizer, or weights that come with theirs: nothing is trained (arguments.py)
        return DatasetDict({**dataset, "train": Dataset.from_list(list(dataset["train"].take(sample)))})
    if sample is None or sample >= len(dataset["train"]):
        return dataset
    return DatasetDict({**dataset, "train": dataset["train"].shuffle(seed=seed).select(range(sample))})


def tokenizer_texts(dataset, columns: list[str]):
    """The training texts the vocabulary is learned from: every column's, so both languages of a pair share one
    vocabulary (§5.1)."""
    rows = dataset["train"].select_columns(columns)
    return (text for example in rows for text in example.values())


def build_tokenizer(args: TrainArguments, dataset, checkpoint: Path | None = None):
    """The tokenizer saved with the weights the run starts from (the resumed `checkpoint`'s, or --init-model's or
    --init-encoder's folder), else the one named by --tokenizer, else one trained here on the training split.

    Weights only mean something with the tokenizer they were trained with, so a saved one always wins, and a
    --tokenizer whose vocabulary differs from it is refused rather than silently paired with the weights.
    """
    saved = saved_tokenizer_location(args, checkpoint)
    if saved is None and args.tokenizer is None:
        texts = tokenizer_texts(tokenizer_training_data(dataset, args.tokenizer_sample, args.seed), args.text_columns())
        return train_tokenizer(texts, vocab_size=args.vocab_size, model_max_length=args.max_length)
    tokenizer = load_tokenizer(saved or args.tokenizer)
    if saved is not None and args.tokenizer is not None:
        check_same_vocabulary(load_tokenizer(args.tokenizer), tokenizer, f"--tokenizer {args.tokenizer}", saved)
    decoder = Path(args.init_decoder or "")
    if checkpoint is None and args.init_decoder and (decoder / "tokenizer.json").is_file():
        given = load_tokenizer(str(decoder))
        check_same_vocabulary(given, tokenizer, f"The tokenizer of --init-decoder {decoder}", saved or args.tokenizer)
    return tokenizer


def saved_tokenizer_location(args: TrainArguments, checkpoint: Path | None) -> str | None:
    """Where the tokenizer of the starting weights is; None when the run starts from new weights. Without a saved
    tokenizer, --tokenizer must name it (a tokenizer trained here would assign other tokens to the ids)."""
    if checkpoint is not None:
        location, source = checkpoint_tokenizer(checkpoint), f"Checkpoint {checkpoint}"
    elif args.init_model or args.init_encoder:
        location = Path(args.init_model or args.init_encoder)
        source = "--init-model" if args.init_model else "--init-encoder"
        if not location.is_dir():  # a Hub repo id: its tokenizer is fetched with it
            return str(location)
    else:
        if args.init_decoder and args.tokenizer is None:  # a causal-LM export's tokenizer pads on the left
            raise InputError(
                f"--init-decoder {args.init_decoder} without --init-encoder: pass the tokenizer the decoder was "
                "trained with as --tokenizer (its causal-LM export holds a prompt tokenizer, unfit for an encoder)."
            )
        return None
    if (location / "tokenizer.json").is_file():
        return str(location)
    if args.tokenizer is None:
        raise InputError(
            f"{source} {location} comes without a tokenizer (tokenizer.json): pass the tokenizer its weights were "
            "trained with as --tokenizer."
        )
    return None


def load_tokenizer(location: str):
    try:
        return AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise InputError(f"Could not load a tokenizer from {location}: {error}") from error


def check_same_vocabulary(given, saved, given_name: str, saved_location: str) -> None:
    given_vocabulary, saved_vocabulary = given.get_vocab(), saved.get_vocab()
    if given_vocabulary != saved_vocabulary:
        differing = sum(saved_vocabulary.get(token) != index for token, index in given_vocabulary.items())
        raise InputError(
            f"{given_name} does not match the tokenizer saved with the weights in {saved_location} ({differing} of "
            f"{len(given_vocabulary)} tokens have other ids): leave out --tokenizer to use the saved one."
        )


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
        max_position_embeddings=max(args.max_length, 512),
    )


def build_model(args: TrainArguments, tokenizer):
    """A new model of the objective's view, or one loaded from --init-model, or warm-started stacks. Label smoothing
    is the training loop's (training/loop.py): the model's own loss stays plain cross-entropy, also for a checkpoint
    saved with `label_smoothing` set."""
    model_class = MODEL_CLASSES[args.objective]
    if args.init_encoder or args.init_decoder:
        model = warm_start(args.init_encoder, args.init_decoder, label_smoothing=0.0)
    elif args.init_model:
        model = load_pretrained(model_class, args.init_model, "--init-model", label_smoothing=0.0)
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
    option = "--init-encoder" if encoder_checkpoint else "--init-decoder"
    first = encoder_checkpoint or decoder_checkpoint
    base = load_pretrained(VaswaniForConditionalGeneration, first, option, **config_overrides)
    if encoder_checkpoint and decoder_checkpoint:
        decoder_source = load_pretrained(VaswaniForCausalLM, decoder_checkpoint, "--init-decoder")
        check_same_architecture(base.config, decoder_source.config, decoder_checkpoint)
        missing, unexpected = base.model.decoder.load_state_dict(decoder_source.model.decoder.state_dict(), strict=False)
        if unexpected or any("cross_attn" not in key for key in missing):
            raise ValueError(f"{decoder_checkpoint} does not fit this decoder: missing {missing}, unexpected {unexpected}")
        base.model.shared.weight.data.copy_(decoder_source.model.shared.weight.data)
    return base


def load_pretrained(model_class, location: str, option: str = "a checkpoint", **config_overrides):
    """`from_pretrained`, after checking that a local folder has a config and readable safetensors weights, not
    pickles: transformers would fall back to a default config (and fail on sizes), name no file when a safetensors
    file is truncated, or unpickle (running its code) a pickle-only folder."""
    folder = Path(location)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise InputError(f"{option} {folder} has no config.json, so it is not a saved model folder.")
        if (problem := weights_problem(folder)) is not None:
            raise InputError(f"{option} {problem}")
        if not any(folder.glob("*.safetensors")):
            raise InputError(f"{option} {folder} has no model weights (*.safetensors).")
    try:  # use_safetensors: a Hub repository holding only pickles is refused too, never unpickled
        return model_class.from_pretrained(location, use_safetensors=True, **config_overrides)
    except OSError as error:  # a Hub id that cannot be fetched, or a file the checks above could not see
        raise InputError(f"{option} {location}: {error}") from error


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
