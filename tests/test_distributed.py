"""Distribution proven with 2 CPU processes (gloo, OMP_NUM_THREADS=1 each), always against one process:
Accelerate's FSDP2 (`accelerate launch --config_file training/accelerate_configs/fsdp_cpu.yaml -m vaswani.training`)
and transformers' native tensor parallelism and FSDP (`from_pretrained(..., distributed_config=...)`).

Every launch costs seconds of process start-up, so each group of checks shares its launches (module fixtures; the
suite runs with `--dist loadfile`, so one worker runs them all). DeepSpeed is not a dependency, and Accelerate runs
it only on GPUs: a DeepSpeed config is refused by name here (README, "Many processes, many GPUs").
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_ids, tiny_config
from distributed_worker import VIEWS
from safetensors.torch import load_file
from transformers.distributed.parallel_utils import replace_layer_number_by_wildcard

from vaswani import VaswaniForCausalLM, VaswaniForConditionalGeneration, VaswaniForMaskedLM, train_tokenizer
from vaswani.training.__main__ import main
from vaswani.configuration.errors import InputError
from vaswani.training.corpus import load_parallel_corpus
from vaswani.training.checkpoints import LATEST
from vaswani.training.distributed import build_accelerator

REPOSITORY = Path(__file__).parents[1]
FSDP_CPU_CONFIG = REPOSITORY / "training" / "accelerate_configs" / "fsdp_cpu.yaml"
TINY_RUN = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64", "--max-length", "48",
            "--batch-size", "4", "--warmup-steps", "2", "--logging-steps", "1", "--eval-steps", "100",
            "--max-eval-examples", "4", "--num-beams", "1", "--pretrain-steps", "0", "--validation-fraction", "0.2",
            "--dropout", "0"]  # fmt: skip
# Two processes of batch 4 against one of batch 8: the same global batch, so the same steps.
ONE_PROCESS = ["--batch-size", "8"]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_checked(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENVIRONMENT)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]


def free_port() -> int:
    """A port for the rendezvous: other test workers may launch processes at the same time."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fsdp_train(*options: str) -> None:
    """`vaswani-train` under Accelerate's FSDP2 on 2 CPU processes, from the shipped CPU config."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU_CONFIG),
              "--main_process_port", str(free_port()), "-m", "vaswani.training"]  # fmt: skip
    run_checked([*launch, *TINY_RUN, *options])


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model" / "model.safetensors")


def assert_same_weights(got: dict, expected: dict, atol: float) -> None:
    assert got.keys() == expected.keys()  # also: no tied copy saved twice, none missing
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, atol=atol, rtol=0, msg=name)


# ----------------------------------------------------------------------------------------------- Accelerate FSDP2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """80 real English-Spanish pairs, their English side as text, and a tokenizer trained on them."""
    folder = tmp_path_factory.mktemp("fsdp-data")
    pairs = load_parallel_corpus()["train"].select(range(80))
    (folder / "pairs.jsonl").write_text("".join(json.dumps({"en": row["en"], "es": row["es"]}) + "\n" for row in pairs))
    (folder / "english.txt").write_text("".join(row["en"] + "\n" for row in pairs))
    texts = [text for row in pairs for text in (row["en"], row["es"])]
    tokenizer = train_tokenizer(texts, vocab_size=300, model_max_length=48, show_progress=False)
    tokenizer.save_pretrained(folder / "tokenizer")
    return {"pairs": folder / "pairs.jsonl", "text": folder / "english.txt", "tokenizer": folder / "tokenizer"}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """Output folders of FSDP runs and their one-process twins: a masked LM and a causal LM (2 steps each), then a
    translation model warm-started from those two (4 steps, a checkpoint every 2)."""
    root = tmp_path_factory.mktemp("fsdp-runs")
    common = ["--tokenizer", str(data["tokenizer"])]
    text = [*common, "--dataset", str(data["text"]), "--max-steps", "2"]
    fsdp_train(*text, "--objective", "mlm", "--output-dir", str(root / "mlm"))
    fsdp_train(*text, "--objective", "clm", "--output-dir", str(root / "clm"))
    assert main([*TINY_RUN, *text, *ONE_PROCESS, "--objective", "clm", "--output-dir", str(root / "clm-one")]) == 0
    warm_start = ["--init-encoder", str(root / "mlm" / "model"), "--init-decoder", str(root / "clm" / "model")]
    translation = [*common, *warm_start, "--dataset", str(data["pairs"]), "--max-steps", "4", "--save-steps", "2"]
    fsdp_train(*translation, "--output-dir", str(root / "seq2seq"))
    assert main([*TINY_RUN, *translation, *ONE_PROCESS, "--output-dir", str(root / "seq2seq-one")]) == 0
    return {"root": root, "translation": translation}


@pytest.mark.slow
def test_fsdp_trains_like_one_process_with_the_same_global_batch(runs):
    """Causal LM and warm-started translation: 2 sharded processes of batch 4 == 1 process of batch 8.

    Tolerance 1e-5 on every parameter after 2 and 4 steps of the paper's Adam and schedule (measured: under 1e-7):
    float32 gradients are reduce-scattered, so summed in another order than in one process; a wrong shard or a
    broken tie would be off by the size of an update (~1e-2 here). Dropout is off: each process draws its own masks.
    """
    root = runs["root"]
    assert_same_weights(weights(root / "clm"), weights(root / "clm-one"), atol=1e-5)
    assert_same_weights(weights(root / "seq2seq"), weights(root / "seq2seq-one"), atol=1e-5)


@pytest.mark.slow
def test_fsdp_trains_the_masked_lm_and_exports_it(runs):
    """Masked LM: each process masks its own share of the batch, so no one-process run sees the same masks; the run
    must train (finite losses at every step) and export a full model."""
    log = json.loads((runs["root"] / "mlm" / "training_log.json").read_text())
    assert len(log["train_log"]) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log["train_log"])
    model = VaswaniForMaskedLM.from_pretrained(runs["root"] / "mlm" / "model")
    assert model.model.shared.weight.shape == (model.config.vocab_size, 32)  # gathered, not one process's shard


@pytest.mark.slow
def test_the_shared_embedding_stays_one_tensor_under_fsdp(runs):
    """Source embedding, target embedding and lm_head are one matrix (§3.4): under FSDP they train as one (the
    weights match one process above) and export as one, so the export holds exactly the one-process keys."""
    root = runs["root"]
    exported = weights(root / "seq2seq")
    assert "model.shared.weight" in exported and "lm_head.weight" not in exported
    assert "model.encoder.embed_tokens.weight" not in exported and "model.decoder.embed_tokens.weight" not in exported
    model = VaswaniForConditionalGeneration.from_pretrained(root / "seq2seq" / "model")
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared


@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_and_resume_exactly(runs, tmp_path):
    """N steps == N/2 steps + kill + `--resume latest` + N/2 steps, under FSDP: the first run's step-2 checkpoint is
    what a run killed after it leaves behind."""
    root = runs["root"]
    checkpoint = root / "seq2seq" / "checkpoints" / "step-0000002"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()  # sharded save
    assert len(list((checkpoint / "pytorch_model_fsdp_0").glob("*.distcp"))) == 2  # one file per process
    killed = tmp_path / "killed"
    shutil.copytree(checkpoint, killed / "checkpoints" / checkpoint.name)
    (killed / "checkpoints" / LATEST).write_text(checkpoint.name)
    fsdp_train(*runs["translation"], "--output-dir", str(killed), "--resume", "latest")
    uninterrupted = json.loads((root / "seq2seq" / "training_log.json").read_text())["train_log"]
    resumed = json.loads((killed / "training_log.json").read_text())["train_log"]
    assert [entry["loss"] for entry in resumed] == [entry["loss"] for entry in uninterrupted]
    assert_same_weights(weights(killed), weights(root / "seq2seq"), atol=0)


@pytest.mark.slow
def test_the_fsdp_export_is_a_full_hub_folder_with_the_trained_logits(runs):
    """The export is the gathered full state dict in a Hub folder: it loads with from_pretrained, and its logits are
    those of the trained model (its one-process twin, whose weights it equals within the tolerance above)."""
    root = runs["root"]
    logits = []
    for folder in (root / "seq2seq" / "model", root / "seq2seq-one" / "model"):
        model = VaswaniForConditionalGeneration.from_pretrained(folder).eval()
        vocab_size = model.config.vocab_size
        input_ids, decoder_input_ids = random_ids(2, 9, high=vocab_size), random_ids(2, 6, 1, high=vocab_size)
        with torch.no_grad():
            logits.append(model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=0)
    for name in ("config.json", "tokenizer.json", "modeling_vaswani.py", "configuration_vaswani.py", "README.md"):
        assert (root / "seq2seq" / "model" / name).is_file(), name
    causal_lm = VaswaniForCausalLM.from_pretrained(root / "clm" / "model")
    assert causal_lm.lm_head.weight.shape == (causal_lm.config.vocab_size, 32)  # the whole vocabulary, not a shard


# ----------------------------------------------------------------------------------------------- native distribution


SHARDED_BY_THE_PLAN = (
    "model.shared.weight",  # and with it the tied lm_head and embed_tokens
    "model.encoder.layers.0.self_attn.qkv_proj.weight",
    "model.decoder.layers.0.cross_attn.q_proj.weight",
    "model.decoder.layers.0.cross_attn.kv_proj.weight",
    "model.decoder.layers.1.feed_forward.fc2.weight",
)


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> list[dict]:
    """The reports of both ranks of one `torchrun` of `distributed_worker.py`: tensor parallel and FSDP inference
    of every view, and a few tensor-parallel training steps, each against the same model in one process."""
    folder = tmp_path_factory.mktemp("native")
    for view, model_class in VIEWS.items():
        torch.manual_seed(0)
        # 4 heads split 2 + 2; the 99-token vocabulary splits unevenly (50 + 49), which vocabulary-parallel allows.
        model_class(tiny_config(num_labels=3)).save_pretrained(folder / "models" / view)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run_checked([*torchrun, str(Path(__file__).with_name("distributed_worker.py")), "--models", str(folder / "models"),
                 "--out", str(folder / "report")])  # fmt: skip
    return [json.loads((folder / f"report.rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("view", list(VIEWS))
def test_tensor_parallel_logits_equal_one_process(native, view):
    """Tolerance 1e-5 (measured: ~1e-6): row-parallel layers add two partial products, then all-reduce them, so
    float32 sums run in another order than in one process."""
    for report in native:
        assert report["tp"][view]["max_logit_difference"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("view", ["seq2seq", "clm"])
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_tensor_parallel_generation_equals_one_process(native, view, search):
    for report in native:
        expected, got = report["tp"][view][search]
        assert got == expected


@pytest.mark.slow
@pytest.mark.parametrize("view", list(VIEWS))
def test_native_fsdp_logits_and_generation_equal_one_process(native, view):
    """FSDP gathers each layer's whole weights before using them: the arithmetic is that of one process (measured:
    bit-identical); 1e-6 leaves room for a kernel that tiles differently."""
    for report in native:
        entry = report["fsdp"][view]
        assert entry["max_logit_difference"] < 1e-6
        for search in ("greedy", "beam"):
            if search in entry:
                assert entry[search][1] == entry[search][0]


@pytest.mark.slow
def test_tensor_parallel_training_matches_one_process(native):
    """3 AdamW steps (lr 1e-3) of the translation model, sharded over 2 processes and in one: every parameter within
    1e-5 (measured: ~1e-6), while the steps moved weights by ~3e-3, so a wrong split would show."""
    for report in native:
        training = report["tp_training"]
        assert training["largest_update"] > 1e-3
        assert max(training["max_parameter_difference"].values()) < 1e-5
        expected_losses, losses = map(torch.tensor, training["losses"])
        torch.testing.assert_close(losses, expected_losses, atol=1e-5, rtol=0)
        assert training["tied"]  # lm_head, the embedding and the stacks' embed_tokens: still one tensor
        sharded = set(training["sharded_parameters"])
        for name in SHARDED_BY_THE_PLAN:
            assert name in sharded, name


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_rule_of_the_parallel_plans_names_a_module_of_the_view(view):
    """transformers warns about, and skips, rules that name nothing; each view's plans must name only its modules
    (the causal LM has no cross-attention, the masked LM no decoder), and the tied head and embedding go together."""
    model = VIEWS[view](tiny_config(num_labels=3))
    names = {replace_layer_number_by_wildcard(name) for name, _ in model.named_modules()}
    assert model.tp_plan and set(model.tp_plan) <= names
    assert model.fsdp_plan and set(model.fsdp_plan) <= names
    if view != "classification":
        assert "lm_head" in model.tp_plan and "model.shared" in model.tp_plan


def test_a_deepspeed_config_on_a_machine_without_gpus_is_refused_by_name(monkeypatch, tmp_path):
    """Accelerate would run it as plain data parallel, which is not what the user asked for."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    with pytest.raises(InputError, match="DeepSpeed through Accelerate needs GPUs.*fsdp_cpu.yaml"):
        build_accelerator("auto", 1, True, tmp_path)
