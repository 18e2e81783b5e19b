"""transformers' own common model tests (`ModelTesterMixin`) run against every Vaswani view.

A built-in transformers model passes `tests/test_modeling_common.py`; so must ours. That suite is not part of the
transformers wheel: this module fetches it once (the tests/ folder of the PyPI sdist of the installed version,
`tests/fetch_transformers_tests.sh`) into ~/.cache/vaswani, or reads it from `TRANSFORMERS_TESTS_DIR`, and is
skipped when neither works (no network).

The sdist leaves out two modules that `test_modeling_common.py` imports, `tests/generation/test_utils.py`
(`GenerationTesterMixin`) and `tests/exporters/test_export.py` (`ExportTesterMixin`); when they are missing this
module puts stand-ins into `sys.modules` whose one test is skipped, so the gap shows in the report. With a git
checkout of transformers (same version) as TRANSFORMERS_TESTS_DIR, the real mixins run.

The testers follow `BartModelTester` (encoder-decoder), `BartStandaloneDecoderModelTester` (decoder only) and
`BertModelTester` (encoder only): one test class per view, as each view is built from its own config.
"""

import importlib
import os
import subprocess
import sys
import tempfile
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch


TESTS_DIR_VARIABLE = "TRANSFORMERS_TESTS_DIR"
# transformers' `tests` package is imported under this name, which cannot clash with this repository's tests/.
PACKAGE = "transformers_tests"


def skip_module(reason: str):
    pytest.skip(f"transformers' common model tests not run: {reason}", allow_module_level=True)


def add_module(name: str, path: Path | None = None, **attributes) -> types.ModuleType:
    """Register a package (with `path`) or a stand-in module (without) in `sys.modules`."""
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def stand_in_mixin(name: str, missing_file: str) -> type:
    def test_mixin_unavailable(self):
        self.skipTest(f"{missing_file} is not in the transformers sdist: {name}'s tests were not run")

    return type(name, (), {"test_mixin_unavailable": test_mixin_unavailable})


def fetched_transformers_tests() -> Path:
    """transformers' test suite for the installed version, fetched from PyPI once into the user's cache.

    A lock keeps pytest-xdist workers from fetching it twice at the same time.
    """
    import fcntl

    import transformers

    root = Path.home() / ".cache" / "vaswani" / f"transformers-tests-{transformers.__version__}"
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / "tests" / "test_modeling_common.py").is_file():
            fetch = Path(__file__).with_name("fetch_transformers_tests.sh")
            completed = subprocess.run(
                ["bash", str(fetch), str(root)], capture_output=True, text=True, timeout=600,
                env={**os.environ, "PYTHON": sys.executable},
            )  # fmt: skip
            if completed.returncode != 0:
                skip_module(f"could not fetch them from PyPI ({completed.stderr.strip()[-300:]})")
    return root


def import_transformers_tests():
    root = os.environ.get(TESTS_DIR_VARIABLE) or fetched_transformers_tests()
    tests_dir = Path(root) / "tests"
    if not (tests_dir / "test_modeling_common.py").is_file():
        skip_module(f"{tests_dir} holds no test_modeling_common.py")
    if sys.modules.get(PACKAGE) is None:
        add_module(PACKAGE, tests_dir)
        for folder, file, mixin in (("generation", "test_utils", "GenerationTesterMixin"),
                                    ("exporters", "test_export", "ExportTesterMixin")):  # fmt: skip
            if not (tests_dir / folder / f"{file}.py").is_file():
                add_module(f"{PACKAGE}.{folder}", tests_dir / folder)
                stand_in = stand_in_mixin(mixin, f"tests/{folder}/{file}.py")
                add_module(f"{PACKAGE}.{folder}.{file}", **{mixin: stand_in})
    try:
        common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        generation = importlib.import_module(f"{PACKAGE}.generation.test_utils")
    except ImportError as error:  # e.g. `parameterized` is not installed, or the suite is of another version
        skip_module(f"{tests_dir} does not import ({error})")
    return common, generation.GenerationTesterMixin


common, GenerationTesterMixin = import_transformers_tests()
ModelTesterMixin, ids_tensor, random_attention_mask = (
    common.ModelTesterMixin, common.ids_tensor, common.random_attention_mask
)

from transformers.models.auto import modeling_auto  # noqa: E402
from transformers.testing_utils import torch_device  # noqa: E402

from vaswani.configuration import VaswaniConfig  # noqa: E402
from vaswani.modeling import (  # noqa: E402
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    VaswaniModel,
)


# A built-in model is listed in transformers' Auto name tables, and the common tests read those tables to decide
# which inputs and labels a class gets and which classes are base models. `AutoModel*.register` fills other tables,
# so each test class lists our classes here for its duration (the config table is left alone, so no Auto class
# ever looks for a `transformers.models.vaswani` module).
AUTO_NAME_TABLES = {
    "MODEL_MAPPING_NAMES": "VaswaniModel",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES": "VaswaniForConditionalGeneration",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": "VaswaniForMaskedLM",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "VaswaniForCausalLM",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "VaswaniForSequenceClassification",
}


class ListedAsBuiltIn:
    # Run the `_init_weights` coverage check, which transformers skips for models whose file has no copyright year
    # from 2023 on (ours has none).
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for table, class_name in AUTO_NAME_TABLES.items():
            patcher = mock.patch.dict(getattr(modeling_auto, table), {VaswaniConfig.model_type: class_name})
            patcher.start()
            cls.addClassCleanup(patcher.stop)


class VaswaniModelTester:
    """Tiny configs and inputs for one view: `view` is "seq2seq", "encoder" or "decoder"."""

    def __init__(
        self,
        parent,
        view="seq2seq",
        batch_size=13,
        seq_length=7,
        is_training=True,
        vocab_size=99,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="relu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=50,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        mask_token_id=4,
        num_labels=3,
    ):
        self.parent = parent
        self.view = view
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.mask_token_id = mask_token_id
        self.num_labels = num_labels

    def get_config(self) -> VaswaniConfig:
        return VaswaniConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            encoder_attention_heads=self.num_attention_heads,
            decoder_attention_heads=self.num_attention_heads,
            encoder_ffn_dim=self.intermediate_size,
            decoder_ffn_dim=self.intermediate_size,
            activation_function=self.hidden_act,
            dropout=self.hidden_dropout_prob,
            attention_dropout=self.attention_probs_dropout_prob,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.bos_token_id,
            mask_token_id=self.mask_token_id,
            num_labels=self.num_labels,
            is_encoder_decoder=self.view == "seq2seq",
            is_decoder=self.view == "decoder",
        )

    def prepare_config_and_inputs(self):
        # Real tokens avoid the special ids (0-4); the source ends with </s>, as a tokenizer makes it.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(5)
        config = self.get_config()
        if self.view == "seq2seq":  # as BartModelTester: source unpadded, target with pads where ids are pad
            input_ids[:, -1] = self.eos_token_id
            decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
            inputs_dict = {
                "input_ids": input_ids,
                "attention_mask": input_ids.ne(self.pad_token_id).long(),
                "decoder_input_ids": decoder_input_ids,
                "decoder_attention_mask": decoder_input_ids.ne(self.pad_token_id).long(),
            }
        elif self.view == "encoder":  # as BertModelTester: random padding
            attention_mask = random_attention_mask([self.batch_size, self.seq_length])
            inputs_dict = {"input_ids": input_ids, "attention_mask": attention_mask}
        else:  # as LlamaModelTester: right padding of every length
            inputs_dict = {"input_ids": input_ids, "attention_mask": torch.tril(torch.ones_like(input_ids))}
        return config, inputs_dict

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()

    def create_and_check_decoder_model_past_large_inputs(self, config, inputs_dict):
        """As BartModelTester's: three new tokens on top of a cache give the outputs of the uncached sequence."""
        model = VaswaniModel(config).to(torch_device).eval()
        decoder = model.decoder if self.view == "decoder" else model.get_decoder()
        input_ids, attention_mask = inputs_dict["input_ids"], inputs_dict["attention_mask"]
        encoder_states = {}
        if self.view == "seq2seq":
            encoder_states = {
                "encoder_hidden_states": model.encoder(input_ids, attention_mask).last_hidden_state,
                "encoder_attention_mask": attention_mask,
            }
        outputs = decoder(input_ids, attention_mask=attention_mask, use_cache=True, **encoder_states)
        past_key_values = outputs.cache

        next_tokens = ids_tensor((self.batch_size, 3), config.vocab_size).clamp(5)
        next_attention_mask = ids_tensor((self.batch_size, 3), 2)
        next_input_ids = torch.cat([input_ids, next_tokens], dim=-1)
        next_attention_mask = torch.cat([attention_mask, next_attention_mask], dim=-1)

        without_past = decoder(next_input_ids, attention_mask=next_attention_mask, **encoder_states).last_hidden_state
        with_past = decoder(
            next_tokens, attention_mask=next_attention_mask, cache=past_key_values, **encoder_states
        ).last_hidden_state
        self.parent.assertEqual(with_past.shape[1], next_tokens.shape[1])
        torch.testing.assert_close(with_past, without_past[:, -3:], atol=1e-4, rtol=1e-4)

    def check_encoder_decoder_model_standalone(self, config, inputs_dict):
        """As BartModelTester's: the encoder and the decoder saved and loaded alone give the model's outputs."""
        model = VaswaniModel(config).to(torch_device).eval()
        outputs = model(**inputs_dict)
        with tempfile.TemporaryDirectory() as folder:
            model.get_encoder().save_pretrained(folder)
            encoder = type(model.get_encoder()).from_pretrained(folder).to(torch_device).eval()
        encoder_output = encoder(inputs_dict["input_ids"], attention_mask=inputs_dict["attention_mask"])[0]
        torch.testing.assert_close(encoder_output, outputs.encoder_last_hidden_state, atol=1e-4, rtol=1e-4)
        with tempfile.TemporaryDirectory() as folder:
            model.get_decoder().save_pretrained(folder)
            decoder = type(model.get_decoder()).from_pretrained(folder).to(torch_device).eval()
        decoder_output = decoder(
            inputs_dict["decoder_input_ids"],
            attention_mask=inputs_dict["decoder_attention_mask"],
            encoder_hidden_states=outputs.encoder_last_hidden_state,
            encoder_attention_mask=inputs_dict["attention_mask"],
        )[0]
        torch.testing.assert_close(decoder_output, outputs.last_hidden_state, atol=1e-4, rtol=1e-4)


class VaswaniModelTest(ListedAsBuiltIn, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """The encoder-decoder views, as BartModelTest."""

    all_model_classes = (VaswaniModel, VaswaniForConditionalGeneration)
    is_encoder_decoder = True

    def setUp(self):
        self.model_tester = VaswaniModelTester(self, view="seq2seq")

    def test_decoder_model_past_with_large_inputs(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_decoder_model_past_large_inputs(config, inputs_dict)

    def test_encoder_decoder_model_standalone(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs()
        self.model_tester.check_encoder_decoder_model_standalone(config, inputs_dict)


class VaswaniEncoderModelTest(ListedAsBuiltIn, ModelTesterMixin, unittest.TestCase):
    """The encoder-only views (masked LM, classification), as BertModelTest."""

    all_model_classes = (VaswaniModel, VaswaniForMaskedLM, VaswaniForSequenceClassification)

    def setUp(self):
        self.model_tester = VaswaniModelTester(self, view="encoder")


class VaswaniStandaloneDecoderModelTest(ListedAsBuiltIn, ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """The decoder-only views (causal LM, no cross-attention), as BartStandaloneDecoderModelTest."""

    all_model_classes = (VaswaniModel, VaswaniForCausalLM)

    def setUp(self):
        self.model_tester = VaswaniModelTester(self, view="decoder")

    def test_decoder_model_past_with_large_inputs(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs()
        self.model_tester.create_and_check_decoder_model_past_large_inputs(config, inputs_dict)


# ----------------------------------------------------------------------------------------------- training

TrainingTesterMixin = importlib.import_module(f"{PACKAGE}.test_training_mixin").TrainingTesterMixin


class TrainsAsABuiltInModel(TrainingTesterMixin):
    """transformers' overfitting test (`test_training_overfit`): 300 Adam steps on one fixed batch of the repeated
    pattern 1..19 must cut the loss and the gradient norm by 90%, and the LM views must then generate the pattern.
    It runs the model's default loss, so it fails for a model that smooths labels by default (a perfect model's
    smoothed loss stays far above 10% of the first one)."""

    model_tester = None  # set by setUp; the mixin declares it as an abstract property
    view: str
    trained_class: type

    def setUp(self):
        # Without dropout, as the Llama-style models the mixin was written for train: dropout is a regulariser that
        # works against overfitting, and the noise it adds to the last gradient norm is what the test measures.
        self.model_tester = VaswaniModelTester(
            self, view=self.view, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )

    def _get_trainable_model_class(self):
        return self.trained_class


class VaswaniCausalLMTrainingTest(TrainsAsABuiltInModel, unittest.TestCase):
    view, trained_class = "decoder", VaswaniForCausalLM


class VaswaniMaskedLMTrainingTest(TrainsAsABuiltInModel, unittest.TestCase):
    view, trained_class = "encoder", VaswaniForMaskedLM


@pytest.mark.slow  # ~10 s: two stacks, 300 steps
class VaswaniSeq2SeqTrainingTest(TrainsAsABuiltInModel, unittest.TestCase):
    """The mixin's check is a decoder-only one: from the pattern's first token, generate the rest. Its
    encoder-decoder form: the source is that first token (padded to the pattern's length, the padding masked) and the
    target the rest, which the decoder produces after its start token (id 1, the pattern's first token too)."""

    view, trained_class = "seq2seq", VaswaniForConditionalGeneration

    def _create_text_training_batch(self, batch_size, seq_length, vocab_size):
        batch = super()._create_text_training_batch(batch_size, seq_length, vocab_size)
        attention_mask = torch.zeros_like(batch["input_ids"])
        attention_mask[:, 0] = 1
        return {"input_ids": batch["input_ids"], "attention_mask": attention_mask, "labels": batch["labels"][:, 1:]}


class VaswaniSequenceClassificationTrainingTest(TrainsAsABuiltInModel, unittest.TestCase):
    """One class label per sequence: the pattern rotated by a different offset in each row, labelled by offset."""

    view, trained_class = "encoder", VaswaniForSequenceClassification

    def _create_text_training_batch(self, batch_size, seq_length, vocab_size):
        batch = super()._create_text_training_batch(batch_size, seq_length, vocab_size)
        input_ids = torch.stack([row.roll(index) for index, row in enumerate(batch["input_ids"])])
        return {"input_ids": input_ids, "labels": torch.arange(batch_size) % self.model_tester.num_labels}
