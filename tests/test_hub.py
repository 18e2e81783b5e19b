"""Vaswani models on the Hub, end to end (issue 5), against the loopback Hub of tests/hub_server.py.

Exports and pushes run in this process: `push_folder(..., endpoint=hub.url, token=...)` hands both to the real
client (`HfApi(endpoint=...)`), and uploads go through LFS because Xet is switched off for the module. Loading
runs in subprocesses, because transformers' downloads take the Hub from HF_ENDPOINT when huggingface_hub is
imported, each with its own HF_HOME:
- a clean process where `vaswani` cannot be imported: every Auto class with `trust_remote_code=True`, pinned
  revisions, load errors, and the model card's own snippet;
- a process where `vaswani` is imported first: plain `from_pretrained`, and `vaswani-push`'s `main` as a user runs it;
- an offline process on the clean process's cache, with HF_ENDPOINT at an empty Hub that must see no request.
Each runs a batch of checks from a JSON spec and prints one JSON object; the tests compare it with the models here.
The three run side by side (most of their time goes into importing torch and transformers).
"""

import contextlib
import io
import itertools
import json
import re
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from conftest import tiny_kwargs
from hub_server import HubState, LoopbackHub
from vaswani import (
    VaswaniConfig,
    VaswaniForCausalLM,
    VaswaniForConditionalGeneration,
    VaswaniForMaskedLM,
    VaswaniForSequenceClassification,
    causal_lm_tokenizer,
    train_tokenizer,
)
from vaswani.training.export import save_for_hub
from vaswani.training.hub import NotAnExportError, main, plan_publication, push_folder, push_trained_model

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")  # httpx2
TOKEN = "hf_loopback_token"
FIXTURES = Path(__file__).with_name("fixtures") / "udhr"
TEXTS = ["Everyone has the right to life, liberty and security of person.", "Nadie será sometido a torturas."]
DECODER_INPUT_IDS = [[1, 40, 41, 42, 43], [1, 50, 51, 52, 53]]
GENERATION = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1)
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Head:
    model_class: type
    auto_class: str
    pipeline_tag: str
    metrics: dict


# The metrics stand for those of a run: the card must carry them (values exact to two decimals).
HEADS = {
    "seq2seq": Head(VaswaniForConditionalGeneration, "AutoModelForSeq2SeqLM", "translation",
                    {"bleu": 12.25, "chrf": 40.5, "validation_loss": 4.125}),
    "mlm": Head(VaswaniForMaskedLM, "AutoModelForMaskedLM", "fill-mask",
                {"loss": 5.5, "perplexity": 244.69, "validation_loss": 5.5}),
    "clm": Head(VaswaniForCausalLM, "AutoModelForCausalLM", "text-generation",
                {"loss": 5.25, "perplexity": 190.57, "validation_loss": 5.25}),
    "cls": Head(VaswaniForSequenceClassification, "AutoModelForSequenceClassification", "text-classification",
                {"accuracy": 0.75}),
}  # fmt: skip
GENERATING = ("seq2seq", "clm")


# ------------------------------------------------------------------------------------------------ client processes

CLIENT_SCRIPT = r"""
import contextlib, io, json, re, sys, time, traceback

started = time.perf_counter()
spec = json.load(open(sys.argv[1]))
if spec["vaswani"]:
    import vaswani  # registers the classes with the Auto classes: plain from_pretrained
else:
    sys.modules["vaswani"] = None  # the editable install is importable even under -I; the Hub code must do without
import torch
import transformers
from huggingface_hub import hf_hub_download
from transformers import AutoConfig, AutoModel, AutoTokenizer

torch.set_num_threads(1)
remote = {} if spec["vaswani"] else {"trust_remote_code": True}


def qualified(obj):
    return f"{type(obj).__module__}.{type(obj).__name__}"


@torch.no_grad()
def load(check):
    options = {**remote, "revision": check.get("revision")}
    model = getattr(transformers, check["auto_class"]).from_pretrained(check["repo"], **options).eval()
    tokenizer = AutoTokenizer.from_pretrained(check["repo"], **options)
    batch = tokenizer(spec["texts"], padding=True, return_tensors="pt")
    extra = {"decoder_input_ids": torch.tensor(spec["decoder_input_ids"])} if check.get("seq2seq") else {}
    result = {"model": qualified(model), "tokenizer": qualified(tokenizer), "input_ids": batch["input_ids"].tolist()}
    result["logits"] = model(**batch, **extra).logits.tolist()
    if check.get("generate"):
        result["generated"] = model.generate(**batch, **spec["generation"]).tolist()
    if check.get("every_auto_class"):
        config = AutoConfig.from_pretrained(check["repo"], **options)
        base = AutoModel.from_pretrained(check["repo"], **options).eval()
        result["config"] = qualified(config)
        result["config_fields"] = {name: getattr(config, name) for name in spec["config_fields"]}
        result["base_model"] = qualified(base)
        result["hidden"] = base(**batch, **extra)[0].tolist()
    return result


def failure(check):
    try:
        model = getattr(transformers, check["auto_class"]).from_pretrained(
            check["repo"], revision=check.get("revision"), **remote
        )
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"loaded": qualified(model)}


def card_snippet(repo):
    card = open(hf_hub_download(repo, "README.md")).read()
    snippet = re.search(r"## How to load.*?```python\n(.*?)```", card, re.DOTALL).group(1)
    namespace, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):  # transformers' "run the custom code? [y/N]" prompt goes to stdout
        exec(snippet, namespace)
    tokenizer = namespace["tokenizer"]
    return {"snippet": snippet, "printed": printed.getvalue(), "model": qualified(namespace["model"]),
            "input_ids": tokenizer(spec["texts"])["input_ids"]}


def command(argv):
    from vaswani.training.hub import main  # what the vaswani-push console script calls

    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        returncode = main(argv)
    return {"returncode": returncode, "stdout": printed.getvalue(), "stderr": errors.getvalue()}


def reported(check, argument):  # the result, or the exception: one broken check must not hide the others
    try:
        return check(argument)
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}


imported = time.perf_counter()
results = {
    "loads": {name: reported(load, check) for name, check in spec.get("loads", {}).items()},
    "failures": {name: failure(check) for name, check in spec.get("failures", {}).items()},
}
if spec.get("card"):
    results["card"] = reported(card_snippet, spec["card"])
if spec.get("command"):
    results["command"] = reported(command, spec["command"])
results["seconds"] = {"imports": round(imported - started, 1), "checks": round(time.perf_counter() - imported, 1)}
print(json.dumps(results))
"""


def start_client(hub: LoopbackHub, hf_home: Path, name: str, spec: dict, *, vaswani: bool, offline: bool = False):
    """A client process (see CLIENT_SCRIPT) started on `spec`; `finish` waits for its JSON."""
    hf_home.mkdir(parents=True, exist_ok=True)
    spec_path = hf_home.parent / f"{name}-spec.json"
    common = {"texts": TEXTS, "decoder_input_ids": DECODER_INPUT_IDS, "generation": GENERATION,
              "config_fields": ["d_model", "vocab_size", "architectures"]}  # fmt: skip
    spec_path.write_text(json.dumps({**common, **spec, "vaswani": vaswani}))
    env = {**hub.client_env(hf_home, offline=offline), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-I", "-c", CLIENT_SCRIPT, str(spec_path)],
        cwd=hf_home, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 240) -> dict:
    """The JSON the client printed, also kept next to its spec (`*-spec.result.json`) for reading after a run."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-4000:]
    Path(process.args[-1]).with_suffix(".result.json").write_text(stdout.splitlines()[-1])
    return json.loads(stdout.splitlines()[-1])


def load_check(repo_id: str, head: str, **options) -> dict:
    return {"repo": repo_id, "auto_class": HEADS[head].auto_class, "seq2seq": head == "seq2seq",
            "generate": head in GENERATING, **options}  # fmt: skip


def failing_load(repo_id: str, **options) -> dict:
    return {"repo": repo_id, "auto_class": "AutoModelForSeq2SeqLM", **options}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def hub():
    """This module's own Hub, so that request logs hold only its requests; Xet off for the pushes made here."""
    with pytest.MonkeyPatch.context() as patch, LoopbackHub() as server:
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        yield server


def push(hub: LoopbackHub, folder: Path, repo_id: str, **options) -> str:
    return push_folder(folder, repo_id, token=TOKEN, endpoint=hub.url, **options)


def api(hub: LoopbackHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=TOKEN)


@pytest.fixture(scope="module")
def tokenizer():
    lines = [line for name in ("eng.txt", "spa.txt") for line in (FIXTURES / name).read_text().splitlines() if line]
    return train_tokenizer(lines, vocab_size=300, model_max_length=64, show_progress=False)


def tokenizer_for(head: str, tokenizer):
    return causal_lm_tokenizer(tokenizer) if head == "clm" else tokenizer


def build_model(head: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    sizes = tiny_kwargs(vocab_size=len(tokenizer), layers=1, heads=2, **({"num_labels": 3} if head == "cls" else {}))
    config = VaswaniConfig.from_tokenizer(tokenizer, **sizes)
    model = HEADS[head].model_class(config).eval()
    with torch.no_grad():  # with the initial std of 0.02, greedy decoding repeats one token: a weak comparison
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
    return model


def export(head: str, model, tokenizer, folder: Path, **options) -> Path:
    card = {"model_name": f"tiny-{head}", "dataset_name": "udhr", "description": f"A tiny {head} model for tests."}
    if head == "seq2seq":
        card.update(language=["en", "es"], datasets=["testuser/udhr-pairs"], dataset_name="testuser/udhr-pairs")
    return save_for_hub(model, tokenizer_for(head, tokenizer), folder, HEADS[head].metrics, card=card, **options)


@pytest.fixture(scope="module")
def models(tokenizer):
    return {head: build_model(head, tokenizer) for head in HEADS}


@pytest.fixture(scope="module")
def exports(models, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {head: export(head, model, tokenizer, root / head) for head, model in models.items()}


@torch.no_grad()
def original_outputs(head: str, model, tokenizer) -> dict:
    batch = tokenizer_for(head, tokenizer)(TEXTS, padding=True, return_tensors="pt")
    extra = {"decoder_input_ids": torch.tensor(DECODER_INPUT_IDS)} if head == "seq2seq" else {}
    outputs = {"input_ids": batch["input_ids"].tolist(), "logits": model(**batch, **extra).logits}
    outputs["hidden"] = model.model(**batch, **extra)[0]
    if head in GENERATING:
        outputs["generated"] = model.generate(**batch, **GENERATION).tolist()
    return outputs


@pytest.fixture(scope="module")
def originals(models, tokenizer):
    return {head: original_outputs(head, model, tokenizer) for head, model in models.items()}


@dataclass
class Pushed:
    repos: dict[str, str]  # head (and "sharded") -> repo id
    revision_models: dict[str, torch.nn.Module]  # revision -> the causal LM pushed there


@pytest.fixture(scope="module")
def pushed(hub, models, exports, tokenizer, tmp_path_factory) -> Pushed:
    """Everything the client processes load: one repo per head, a sharded one, three revisions, a truncated one."""
    root = tmp_path_factory.mktemp("pushes")
    repos = {head: f"testuser/tiny-{head}" for head in HEADS}
    for head, repo_id in repos.items():
        push(hub, exports[head], repo_id)
    repos["sharded"] = "testuser/tiny-sharded"
    sharded = export("seq2seq", models["seq2seq"], tokenizer, root / "sharded", max_shard_size="50KB")
    push(hub, sharded, repos["sharded"])

    # main gets A, then the branch "dev" (made from main by push_folder) gets B, then main moves on to C.
    first, second, third = (build_model("clm", tokenizer, seed) for seed in (1, 2, 3))
    first_sha = commit_sha(push(hub, export("clm", first, tokenizer, root / "first"), "testuser/tiny-revisions"))
    push(hub, export("clm", second, tokenizer, root / "second"), "testuser/tiny-revisions", revision="dev")
    push(hub, export("clm", third, tokenizer, root / "third"), "testuser/tiny-revisions")

    # Weights damaged on their way to the Hub: a file cut short, a shard lost. push_folder refuses such folders, so
    # they go up by hand.
    truncated = shutil.copytree(exports["seq2seq"], root / "truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    upload_by_hand(hub, truncated, "testuser/tiny-truncated")
    shard_lost = shutil.copytree(sharded, root / "shard-lost")
    sorted(shard_lost.glob("model-*.safetensors"))[-1].unlink()
    upload_by_hand(hub, shard_lost, "testuser/tiny-shard-lost")
    return Pushed(repos, {"main": third, "dev": second, first_sha: first})


def upload_by_hand(hub: LoopbackHub, folder: Path, repo_id: str) -> None:
    api(hub).create_repo(repo_id)
    api(hub).upload_folder(repo_id=repo_id, folder_path=folder)


def commit_sha(commit_url: str) -> str:
    sha = commit_url.rsplit("/commit/", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{40}", sha), commit_url
    return sha


CLI_REPO = "testuser/tiny-cli"


@pytest.fixture(scope="module")
def client_results(hub, pushed, exports, tmp_path_factory) -> dict:
    """The clean, installed and offline client processes (see the module docstring), run side by side."""
    root = tmp_path_factory.mktemp("clients")
    every_head = {head: load_check(repo, head.replace("sharded", "seq2seq"), every_auto_class=head != "sharded")
                  for head, repo in pushed.repos.items()}  # fmt: skip
    revisions = {f"revision {rev}": load_check("testuser/tiny-revisions", "clm", revision=rev)
                 for rev in pushed.revision_models}  # fmt: skip
    clean_spec = {
        "loads": {**every_head, **revisions},
        "failures": {
            "missing repo": failing_load("testuser/no-such-repo"),
            "missing revision": failing_load(pushed.repos["seq2seq"], revision="no-such-branch"),
            "truncated weights": failing_load("testuser/tiny-truncated"),
            "lost shard": failing_load("testuser/tiny-shard-lost"),
        },
        "card": pushed.repos["seq2seq"],
    }
    cli_folder = shutil.copytree(exports["cls"], root / "cli-model")
    installed_spec = {
        "loads": {head: check for head, check in every_head.items() if head in HEADS},
        "command": [str(cli_folder), CLI_REPO, "--private", "--revision", "dev", "--message", "From the CLI"],
    }
    offline_spec = {
        "loads": {head: load_check(pushed.repos[head], head, every_auto_class=True) for head in HEADS},
        "failures": {"never downloaded": failing_load("testuser/tiny-never-downloaded")},
    }
    clean = start_client(hub, root / "clean", "clean", clean_spec, vaswani=False)
    installed = start_client(hub, root / "installed", "installed", installed_spec, vaswani=True)
    offline = None
    try:
        results = {"clean": finish(clean), "cli_folder": cli_folder}
        with LoopbackHub() as empty_hub:  # nothing there: all must come from the clean cache
            offline = start_client(empty_hub, root / "clean", "offline", offline_spec, vaswani=False, offline=True)
            results.update(installed=finish(installed), offline=finish(offline), offline_requests=empty_hub.requests)
    finally:  # after a failure, do not leave the others running
        for process in (clean, installed, offline):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    return results


def succeeded(result: dict) -> dict:
    assert "traceback" not in result, result["traceback"]
    return result


def assert_same_outputs(loaded: dict, original: dict, head: str) -> None:
    assert succeeded(loaded)["input_ids"] == original["input_ids"]
    assert torch.equal(torch.as_tensor(loaded["logits"]), original["logits"])  # exactly: fp32, same kernels
    if head in GENERATING:
        assert len({token for row in original["generated"] for token in row[-6:]}) > 2  # not one repeated token
        assert loaded["generated"] == original["generated"]


# ------------------------------------------------------------------------------------------------ what is pushed


def test_the_pushed_repo_holds_the_export(hub, pushed, exports):
    files = api(hub).list_repo_files(pushed.repos["seq2seq"])
    assert sorted(files) == sorted([".gitattributes", *(path.name for path in exports["seq2seq"].iterdir())])
    assert {"config.json", "configuration_vaswani.py", "modeling_vaswani.py", "model.safetensors",
            "tokenizer.json", "tokenizer_config.json", "README.md", "all_results.json"} <= set(files)  # fmt: skip
    lfs = {entry.path for entry in api(hub).list_repo_tree(pushed.repos["seq2seq"]) if getattr(entry, "lfs", None)}
    assert lfs == {"model.safetensors"}
    sharded = api(hub).list_repo_files(pushed.repos["sharded"])
    assert INDEX in sharded and "model.safetensors" not in sharded
    assert len([name for name in sharded if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name)]) > 1


def test_sharded_export_has_an_index_and_shards_that_load(models, tokenizer, originals, tmp_path):
    folder = export("seq2seq", models["seq2seq"], tokenizer, tmp_path / "sharded", max_shard_size="50KB")
    index = json.loads((folder / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (folder / "model.safetensors").exists()
    stored = {name for shard in shards for name in load_file(folder / shard)}
    assert stored == set(index["weight_map"])
    reloaded = VaswaniForConditionalGeneration.from_pretrained(folder).eval()
    assert_same_outputs(original_outputs("seq2seq", reloaded, tokenizer), originals["seq2seq"], "seq2seq")


# ------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("head", [*HEADS, "sharded"])
def test_every_auto_class_loads_the_hub_code_where_vaswani_is_not_installed(head, client_results, originals, models):
    loaded = succeeded(client_results["clean"]["loads"][head])
    model_head = head.replace("sharded", "seq2seq")
    architecture = HEADS[model_head].model_class.__name__
    assert re.fullmatch(rf"transformers_modules\..*\.modeling_vaswani\.{architecture}", loaded["model"])
    assert loaded["tokenizer"].endswith(".TokenizersBackend")
    assert_same_outputs(loaded, originals[model_head], model_head)
    if head != "sharded":
        assert re.fullmatch(r"transformers_modules\..*\.configuration_vaswani\.VaswaniConfig", loaded["config"])
        config = models[head].config
        expected_fields = {"d_model": 32, "vocab_size": config.vocab_size, "architectures": [architecture]}
        assert loaded["config_fields"] == expected_fields
        assert re.fullmatch(r"transformers_modules\..*\.modeling_vaswani\.VaswaniModel", loaded["base_model"])
        assert torch.equal(torch.tensor(loaded["hidden"]), originals[head]["hidden"])


@pytest.mark.parametrize("head", HEADS)
def test_plain_from_pretrained_where_vaswani_is_installed(head, client_results, originals):
    loaded = succeeded(client_results["installed"]["loads"][head])
    assert loaded["model"] == f"vaswani.modeling.modeling_vaswani.{HEADS[head].model_class.__name__}"
    assert loaded["config"] == "vaswani.configuration.configuration_vaswani.VaswaniConfig"
    assert_same_outputs(loaded, originals[head], head)
    assert torch.equal(torch.tensor(loaded["hidden"]), originals[head]["hidden"])


def test_pinned_revisions_load_their_own_weights(client_results, pushed, tokenizer):
    expected = {rev: original_outputs("clm", model, tokenizer) for rev, model in pushed.revision_models.items()}
    logits = [value["logits"] for value in expected.values()]
    assert not torch.equal(logits[0], logits[1]) and not torch.equal(logits[1], logits[2])  # three different models
    for revision, original in expected.items():
        assert_same_outputs(client_results["clean"]["loads"][f"revision {revision}"], original, "clm")


def test_load_errors_are_clear_and_never_half_load(client_results):
    failures = client_results["clean"]["failures"]
    missing_repo = failures["missing repo"]
    assert missing_repo["error"] == "OSError"
    assert "testuser/no-such-repo is not a local folder and is not a valid model identifier" in missing_repo["message"]
    assert failures["missing revision"]["error"] == "OSError"
    assert "no-such-branch is not a valid git identifier" in failures["missing revision"]["message"]
    truncated = failures["truncated weights"]
    assert "loaded" not in truncated, truncated  # random weights where the file was cut would be a silent failure
    assert truncated["error"] in ("SafetensorError", "OSError"), truncated
    assert re.search(r"(?i)incomplete|truncat|deserializ", truncated["message"]), truncated
    lost = failures["lost shard"]
    assert lost["error"] == "OSError" and "loaded" not in lost, lost
    assert re.search(r"does not appear to have a file named model-\d{5}-of-\d{5}\.safetensors", lost["message"])


def test_offline_reload_from_the_cache_makes_no_request(client_results, originals):
    offline = client_results["offline"]
    assert client_results["offline_requests"] == []  # the (empty) Hub at HF_ENDPOINT was never asked anything
    for head in HEADS:
        assert offline["loads"][head] == client_results["clean"]["loads"][head]
        assert_same_outputs(offline["loads"][head], originals[head], head)
    never = offline["failures"]["never downloaded"]
    assert never["error"] == "OSError" and "cached files" in never["message"], never


# ------------------------------------------------------------------------------------------------ the model card


@pytest.mark.parametrize("head", HEADS)
def test_model_card_metadata_validates_and_holds_the_measured_numbers(head, exports):
    card = ModelCard.load(exports[head] / "README.md", ignore_metadata_errors=False)
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == HEADS[head].pipeline_tag
    assert {"vaswani", "custom_code"} <= set(data.tags)
    measured = {name: value for name, value in HEADS[head].metrics.items() if name != "validation_loss"}
    assert data.model_name == f"tiny-{head}"
    assert {result.metric_type: result.metric_value for result in data.eval_results} == measured
    assert {result.task_type for result in data.eval_results} == {HEADS[head].pipeline_tag}
    for value in HEADS[head].metrics.values():
        assert f"| {value:.2f} |" in card.text
    if head == "seq2seq":
        assert data.datasets == ["testuser/udhr-pairs"] and data.language == ["en", "es"]
        assert {result.dataset_type for result in data.eval_results} == {"testuser/udhr-pairs"}


def test_pushed_card_names_the_repo_and_its_snippet_runs_without_a_prompt(client_results, pushed, tokenizer):
    card = succeeded(client_results["clean"]["card"])
    assert card["printed"] == ""  # no "Do you wish to run the custom code? [y/N]" (AutoTokenizer reads the config)
    repo_id = pushed.repos["seq2seq"]
    assert card["snippet"].count(f'.from_pretrained("{repo_id}", trust_remote_code=True)') == 2
    assert card["model"].endswith(".modeling_vaswani.VaswaniForConditionalGeneration")
    assert card["input_ids"] == tokenizer(TEXTS)["input_ids"]


# ------------------------------------------------------------------------------------------------ pushing


@pytest.fixture
def commits(monkeypatch) -> list[list[str]]:
    """The paths of each commit the Hub receives (the server runs in this process)."""
    log, receive = [], HubState.commit

    def recorded(state, repo, branch, title, operations):
        log.append(sorted(operation["value"]["path"] for operation in operations))
        return receive(state, repo, branch, title, operations)

    monkeypatch.setattr(HubState, "commit", recorded)
    return log


def lfs_uploads(hub: LoopbackHub) -> list[str]:
    return [path for method, path in hub.requests if method == "PUT" and path.startswith("/__lfs/upload/")]


def test_pushing_again_uploads_only_what_changed(hub, exports, commits, tmp_path):
    folder = shutil.copytree(exports["mlm"], tmp_path / "model")
    first = push(hub, folder, "testuser/tiny-repush")
    assert len(commits) == 1 and "model.safetensors" in commits[0]

    hub.clear_requests()
    assert push(hub, folder, "testuser/tiny-repush") == first  # the head commit, unchanged
    assert ("POST", "/api/models/testuser/tiny-repush/preupload/main") in hub.requests  # it did compare
    assert lfs_uploads(hub) == [] and len(commits) == 1

    hub.clear_requests()
    card = folder / "README.md"
    card.write_text(card.read_text() + "\nRetrained on more data.\n")
    changed = push(hub, folder, "testuser/tiny-repush")
    assert changed != first
    assert commits[1:] == [["README.md"]] and lfs_uploads(hub) == []


def break_export(folder: Path, how: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    if how == "no config.json":
        (folder / "config.json").unlink()
    elif how == "no auto_map":
        del config["auto_map"]
        (folder / "config.json").write_text(json.dumps(config))
    elif how == "no modeling code":
        (folder / "modeling_vaswani.py").unlink()
    elif how == "no weights":
        (folder / "model.safetensors").unlink()
    elif how == "truncated weights":
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[:-100])
    elif how == "padded weights":
        with (folder / "model.safetensors").open("ab") as weights:
            weights.write(b"\0" * 8)
    elif how == "no tokenizer":
        (folder / "tokenizer_config.json").unlink()


@pytest.mark.parametrize(
    "how, message",
    [
        ("no config.json", "has no config.json"),
        ("no auto_map", "has no auto_map"),
        ("no modeling code", "lacks code files that config.json names: modeling_vaswani.py"),
        ("no weights", r"has no weights \(model.safetensors or model.safetensors.index.json\)"),
        ("truncated weights", r"model.safetensors is not an intact safetensors file \(.*incomplete metadata"),
        ("padded weights", r"model.safetensors is not an intact safetensors file \(.*incomplete metadata"),
        ("no tokenizer", r"has no tokenizer \(tokenizer_config.json\)"),
    ],
)
def test_push_refuses_a_folder_that_is_not_an_export(how, message, hub, exports, tmp_path):
    folder = shutil.copytree(exports["cls"], tmp_path / "model")
    push(hub, folder, "testuser/tiny-refused")  # the intact export goes
    break_export(folder, how)
    hub.clear_requests()
    with pytest.raises(NotAnExportError, match=message):
        push(hub, folder, "testuser/tiny-refused")
    assert hub.requests == []  # refused before asking the Hub anything


def test_push_refuses_a_sharded_export_missing_a_shard(hub, models, tokenizer, tmp_path):
    folder = export("seq2seq", models["seq2seq"], tokenizer, tmp_path / "sharded", max_shard_size="50KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(NotAnExportError, match=f"lacks weight shards that {INDEX} names: {shard.name}"):
        push(hub, folder, "testuser/tiny-missing-shard")


def test_push_trained_model_pushes_only_when_asked(hub, exports, monkeypatch, tmp_path):
    """`vaswani-train --push-to-hub`: the Hub and token come from huggingface_hub's settings, as for users."""
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = shutil.copytree(exports["seq2seq"], tmp_path / "model")
    hub.clear_requests()
    assert push_trained_model(folder, None, {"bleu": 12.25}) is None
    assert hub.requests == []
    url = push_trained_model(folder, "testuser/tiny-trained", {"bleu": 12.25, "chrf": 40.5, "steps": 3})
    assert url == f"{hub.url}/testuser/tiny-trained/commit/{commit_sha(url)}"
    [commit] = api(hub).list_repo_commits("testuser/tiny-trained")[:1]
    assert commit.title == "Upload a model trained with vaswani-train (bleu 12.25, chrf 40.50)"


# ------------------------------------------------------------------------------------------------ vaswani-push

def test_vaswani_push_command_pushes_a_private_branch(hub, client_results):
    """`vaswani-push FOLDER REPO --private --revision dev --message ...`, run in the installed client process."""
    command = succeeded(client_results["installed"]["command"])
    assert command["returncode"] == 0 and command["stderr"] == "", command
    url = command["stdout"].strip()
    sha = commit_sha(url)
    assert url == f"{hub.url}/{CLI_REPO}/commit/{sha}"
    info = api(hub).model_info(CLI_REPO, revision="dev")
    assert info.private is True and info.sha == sha
    assert {"config.json", "modeling_vaswani.py", "model.safetensors"} <= {file.rfilename for file in info.siblings}
    assert api(hub).list_repo_files(CLI_REPO) == [".gitattributes"]  # main is untouched
    assert api(hub).list_repo_commits(CLI_REPO, revision="dev")[0].title == "From the CLI"
    card = (client_results["cli_folder"] / "README.md").read_text()
    assert f'.from_pretrained("{CLI_REPO}", trust_remote_code=True)' in card


class Unauthorized(BaseHTTPRequestHandler):
    """A Hub that refuses every token, as huggingface.co does a wrong one."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": "Invalid username or password."}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *arguments):
        pass


@pytest.fixture
def refusing_hub():
    server = HTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    """The URL of a port that nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    "case, options, message",
    [
        ("missing folder", [], r"NotAnExportError: .*/no-such-folder is not a folder\."),
        ("not an export", [], r"NotAnExportError: .* has no auto_map naming the code files"),
        ("commit as revision", ["--revision", "0" * 40], r"ValueError: revision='0{40}' is a commit: commits go"),
        ("refused token", [], r"HfHubHTTPError: .*401.*: Invalid username or password\. \(check your token: `hf auth"),
        ("unreachable Hub", [], r"cannot reach the Hub at http://127\.0\.0\.1:\d+: ConnectError: "),
    ],
)
def test_vaswani_push_errors_are_one_line(case, options, message, exports, refusing_hub, monkeypatch, capsys, tmp_path):
    folder = shutil.copytree(exports["cls"], tmp_path / "model")
    if case == "missing folder":
        folder = tmp_path / "no-such-folder"
    elif case == "not an export":
        break_export(folder, "no auto_map")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    monkeypatch.setattr(constants, "ENDPOINT", refusing_hub if case == "refused token" else closed_port_url())
    assert main([str(folder), "testuser/tiny-errors", *options]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.count("\n") == 1 and printed.err.startswith("vaswani-push: error: "), printed.err
    assert re.search(message, printed.err), printed.err


# ------------------------------------------------------------------------------------------------ only the export goes


def test_everything_an_export_writes_is_published(exports, models, tokenizer, tmp_path):
    """The allow-list holds every file save_for_hub writes: every head, shards, a plot and the training arguments."""
    plot = tmp_path / "loss_curves.png"
    plot.write_bytes(b"\x89PNG not really")
    full = save_for_hub(models["seq2seq"], tokenizer, tmp_path / "full", {"bleu": 1.5}, {"learning_rate": 0.1},
                        card={"plot": plot}, max_shard_size="50KB")  # fmt: skip
    assert {"loss_curves.png", "training_args.json", INDEX} <= {path.name for path in full.iterdir()}
    for folder in [*exports.values(), full]:
        publication = plan_publication(folder)
        assert publication.files == sorted(path.name for path in folder.iterdir()) and publication.skipped == {}


EXTRA_STEM = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=10)
EXTRA_SUFFIX = st.sampled_from(["", ".txt", ".json", ".md", ".png", ".py", ".safetensors", ".jinja"])
PICKLE_SUFFIX = st.sampled_from([".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".BIN", ".Pt"])
# What a careless or hostile user leaves in a model folder: (kind, name). "link out" leads to a secret outside.
EXTRA_ENTRY = st.one_of(
    st.tuples(st.sampled_from(["file", "folder", "link out", "link in"]),
              st.builds(str.__add__, EXTRA_STEM, EXTRA_SUFFIX)),  # fmt: skip
    st.tuples(st.just("file"), st.builds(lambda stem, suffix: f".{stem}{suffix}", EXTRA_STEM, EXTRA_SUFFIX)),
)
LINKABLE = ["README.md", "config.json", "all_results.json", "tokenizer.json"]  # export files a link may replace
FRESH_REPOS = (f"testuser/tiny-allow-list-{number}" for number in itertools.count())


def plant(folder: Path, kind: str, name: str, secret: Path) -> None:
    path = folder / name
    if kind in ("file", "pickle"):
        path.write_bytes(b"\x80\x04K\x01." if kind == "pickle" else b"HF_TOKEN=hf_secret\n")
    elif kind == "folder":  # a stray checkpoint: export-named files and a pickle, none of which may go
        path.mkdir()
        for inner in ("config.json", "model.safetensors", "optimizer.bin"):
            (path / inner).write_bytes((folder / inner).read_bytes() if (folder / inner).exists() else b"x")
    elif kind == "link out":
        path.symlink_to(secret)
    elif kind == "link in":
        path.symlink_to("config.json")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    extras=st.lists(EXTRA_ENTRY, max_size=6, unique_by=lambda entry: entry[1].lower()),
    pickle=st.one_of(st.none(), st.builds(str.__add__, EXTRA_STEM, PICKLE_SUFFIX)),
    linked_out=st.one_of(st.none(), st.sampled_from(LINKABLE)),
)
def test_push_publishes_exactly_the_export_and_refuses_pickles_and_links_out(hub, exports, extras, pickle, linked_out):
    export_names = sorted(path.name for path in exports["mlm"].iterdir())
    extras = [(kind, name) for kind, name in extras if name not in export_names and name != pickle]
    with tempfile.TemporaryDirectory() as root:
        secret = Path(root, "secret.env")
        secret.write_text("HF_TOKEN=hf_secret\n")
        folder = shutil.copytree(exports["mlm"], Path(root, "model"))
        for kind, name in extras + ([("pickle", pickle)] if pickle else []):
            plant(folder, kind, name, secret)
        if linked_out:  # an export file replaced by a link to a file outside
            shutil.copyfile(folder / linked_out, secret)
            (folder / linked_out).unlink()
            (folder / linked_out).symlink_to(secret)
        repo_id, stderr = next(FRESH_REPOS), io.StringIO()
        hub.clear_requests()
        if pickle or linked_out:
            expected = f"holds pickle files, which run code when loaded .*: {re.escape(pickle)}\\." if pickle else (
                f"{re.escape(linked_out)} is a link to .*, outside the folder")
            with pytest.raises(NotAnExportError, match=expected):
                push(hub, folder, repo_id)
            assert hub.requests == []
            return
        with contextlib.redirect_stderr(stderr):
            push(hub, folder, repo_id)
    assert sorted(api(hub).list_repo_files(repo_id)) == sorted([".gitattributes", *export_names])
    named = [f"{name}/ (a folder)" if kind == "folder" else name for kind, name in extras]
    notes = [line for line in stderr.getvalue().splitlines() if line.startswith("Not uploaded")]  # not progress bars
    assert len(notes) == (1 if extras else 0) and all(entry in notes[0] for entry in named)


def test_dry_run_lists_what_would_go_and_asks_the_hub_nothing(hub, exports, monkeypatch, capsys, tmp_path):
    folder = shutil.copytree(exports["seq2seq"], tmp_path / "model")
    (folder / ".env").write_text("HF_TOKEN=hf_secret\n")
    (folder / "checkpoints").mkdir()
    (folder / "notes.txt").write_text("to do\n")
    card = (folder / "README.md").read_text()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    hub.clear_requests()
    assert main([str(folder), "testuser/tiny-dry-run", "--dry-run"]) == 0
    printed = capsys.readouterr()
    published = ", ".join(sorted(path.name for path in exports["seq2seq"].iterdir()))
    assert printed.out == (
        f"Would upload {len(list(exports['seq2seq'].iterdir()))} files of {folder} to testuser/tiny-dry-run: "
        f"{published}\nWould skip 3: .env (hidden), checkpoints/ (a folder), notes.txt (not a file an export writes)\n"
    )
    assert printed.err == "" and hub.requests == [] and (folder / "README.md").read_text() == card
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    assert main([str(folder), "testuser/tiny-dry-run", "--dry-run"]) == 1  # refused as a real push would be
    assert "pytorch_model.bin" in capsys.readouterr().err and hub.requests == []
