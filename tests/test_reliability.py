"""Reliability and security of training (issue 11): nothing in a checkpoint is unpickled, a damaged checkpoint or
model folder is named, one run per output folder, every flag and every bad row of data refused up front with a
message that names it, an export that is never half-written, and a log that a resume does not change."""

import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from conftest import write_pairs_file
from vaswani import VaswaniForMaskedLM, train_tokenizer
from vaswani.training.__main__ import main
from vaswani.configuration.errors import InputError
from vaswani.configuration.files import replacing_folder
from vaswani.training.arguments import TrainArguments, parse_arguments
from vaswani.training.build import build_model, build_tokenizer, load_pretrained
from vaswani.training.data import load_raw_dataset, tokenize_pairs
from vaswani.training.export import save_for_hub
from vaswani.training.checkpoints import LATEST, MANIFEST, STATE_FILE, TOKENIZER, resolve_resume, write_manifest
from vaswani.training.output_folder import LOCK_FILE, locked_output_folder
from vaswani.training.run import run

TINY_RUN = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64", "--vocab-size", "300",
            "--max-length", "48", "--batch-size", "8", "--warmup-steps", "2", "--num-beams", "1",
            "--max-eval-examples", "2", "--pretrain-steps", "0", "--validation-fraction", "0.2",
            "--lr-scheduler", "inverse_sqrt"]  # fmt: skip


class CreatesAFile:
    """Unpickling this object creates `path`: the test of whether anything in a checkpoint is unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return write_pairs_file(tmp_path_factory.mktemp("data"), 40)


@pytest.fixture(scope="module")
def finished_run(pairs_file, tmp_path_factory) -> Path:
    """The output folder of a one-step run: one checkpoint and the exported model."""
    output_dir = tmp_path_factory.mktemp("run")
    run(parse_arguments([*TINY_RUN, "--dataset", str(pairs_file), "--output-dir", str(output_dir), "--max-steps", "1"]))
    return output_dir


@pytest.fixture
def checkpoint(finished_run, tmp_path) -> Path:
    """A copy of the run's checkpoint, free to damage."""
    return Path(shutil.copytree(finished_run / "checkpoints" / "step-0000001", tmp_path / "step-0000001"))


def resume_from(folder: Path, pairs_file: Path, output_dir: Path, *extra: str):
    argv = [*TINY_RUN, "--dataset", str(pairs_file), "--output-dir", str(output_dir), "--max-steps", "2"]
    return run(parse_arguments([*argv, "--resume", str(folder), *extra]))


# ----------------------------------------------------------------------------------------------- 1. no unpickling


def test_a_checkpoint_holds_json_state_its_tokenizer_and_a_manifest_of_every_file(checkpoint):
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # the training state is no pickle
    assert json.loads((checkpoint / STATE_FILE).read_text())["step"] == 1
    assert (checkpoint / TOKENIZER / "tokenizer.json").is_file()
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    files = {path.relative_to(checkpoint).as_posix() for path in checkpoint.rglob("*") if path.is_file()}
    assert manifest.keys() == files - {MANIFEST}
    assert manifest["model.safetensors"]["size"] == (checkpoint / "model.safetensors").stat().st_size


@pytest.mark.parametrize(
    "state_file", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
)
def test_a_crafted_pickle_in_a_checkpoint_never_runs(state_file, checkpoint, pairs_file, tmp_path):
    """Even with a manifest rewritten to match (as an attacker would), no file of the checkpoint is unpickled."""
    created = tmp_path / "created-by-unpickling"
    torch.save(CreatesAFile(created), checkpoint / state_file)
    write_manifest(checkpoint)
    with pytest.raises(InputError) as error:
        resume_from(checkpoint, pairs_file, tmp_path / "out")
    assert not created.exists()
    assert f"{checkpoint / state_file} " in str(error.value)  # named
    with pytest.raises(pickle.UnpicklingError):  # refused data-only, and it does run code when unpickled
        torch.load(checkpoint / state_file, weights_only=True)
    torch.load(checkpoint / state_file, weights_only=False)
    assert created.exists()


def test_an_unreadable_rng_file_fails_the_resume_and_is_named(checkpoint, pairs_file, tmp_path):
    rng_file = checkpoint / "random_states_0.pkl"
    rng_file.write_bytes(rng_file.read_bytes()[:50])
    write_manifest(checkpoint)  # not a damaged copy the manifest would catch: a file that was never readable
    with pytest.raises(InputError, match="random_states_0.pkl cannot be read.*the resume is not exact"):
        resume_from(checkpoint, pairs_file, tmp_path / "out")


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink"])
def test_latest_is_followed_only_inside_the_runs_checkpoints_folder(how, checkpoint, tmp_path):
    root = tmp_path / "out" / "checkpoints"
    root.mkdir(parents=True)
    latest = {"absolute": str(checkpoint), "dot-dot": f"../../{checkpoint.name}", "symlink": "step-0000009"}[how]
    if how == "symlink":
        (root / "step-0000009").symlink_to(checkpoint, target_is_directory=True)
    (root / LATEST).write_text(latest)
    with pytest.raises(InputError, match="which is not a checkpoint folder inside .* it is not followed"):
        resolve_resume("latest", tmp_path / "out")


def test_resume_latest_without_a_checkpoint_says_it_starts_from_scratch(pairs_file, tmp_path, capsys):
    argv = [*TINY_RUN, "--dataset", str(pairs_file), "--output-dir", str(tmp_path), "--max-steps", "1"]
    assert run(parse_arguments([*argv, "--resume", "latest"])).state.step == 1
    assert f"--resume latest: {tmp_path / 'checkpoints'} holds no checkpoint yet; training starts from step 0." in (
        capsys.readouterr().out
    )


# ----------------------------------------------------------------------------------------------- 7. damage named


@pytest.mark.parametrize("damage", ["flipped byte", "missing file", "extra file"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(damage, checkpoint, pairs_file, tmp_path):
    weights = checkpoint / "model.safetensors"
    if damage == "flipped byte":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF  # in the tensor data: safetensors itself would load it without complaint
        weights.write_bytes(bytes(data))
        expected = "model.safetensors differs from the checkpoint's manifest.json"
    elif damage == "missing file":
        (checkpoint / "optimizer.bin").unlink()
        expected = "optimizer.bin is missing"
    else:
        (checkpoint / "notes.bin").write_bytes(b"x")
        expected = "notes.bin is not part of the checkpoint"
    with pytest.raises(InputError, match=expected):
        resume_from(checkpoint, pairs_file, tmp_path / "out")


def test_resume_at_a_model_folder_says_to_use_init_model(finished_run, tmp_path):
    model_dir = finished_run / "model"
    with pytest.raises(InputError, match=f"--resume {model_dir} is a model folder, not a checkpoint.*--init-model"):
        resolve_resume(str(model_dir), tmp_path)


def test_damaged_model_and_tokenizer_folders_are_named(finished_run, pairs_file, tmp_path):
    model_dir = Path(shutil.copytree(finished_run / "model", tmp_path / "model"))
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    argv = [*TINY_RUN, "--dataset", str(pairs_file), "--output-dir", str(tmp_path / "out"), "--max-steps", "1"]
    with pytest.raises(InputError, match=f"cannot read the weights {weights}, damaged or truncated"):
        run(parse_arguments([*argv, "--init-model", str(model_dir)]))
    (model_dir / "config.json").unlink()
    with pytest.raises(InputError, match=f"--init-model {model_dir} has no config.json"):
        parse_arguments([*argv, "--init-model", str(model_dir)])
    tokenizer_dir = Path(shutil.copytree(finished_run / "model", tmp_path / "tokenizer"))
    (tokenizer_dir / "tokenizer.json").unlink()
    with pytest.raises(InputError, match=f"--tokenizer {tokenizer_dir} has no tokenizer.json"):
        parse_arguments([*argv, "--tokenizer", str(tokenizer_dir)])


# ----------------------------------------------------------------------------------------------- 2. tokenizer


def test_starting_from_saved_weights_uses_their_tokenizer_and_refuses_another(finished_run, checkpoint, tmp_path):
    """Another dataset would train another vocabulary: the saved tokenizer wins, a different --tokenizer is refused."""
    saved = AutoTokenizer.from_pretrained(finished_run / "model").get_vocab()
    other_data = load_raw_dataset(str(write_lines(tmp_path / "other.txt", ["zebra quartz jukebox"] * 20)))
    args = TrainArguments(objective="mlm", output_dir=str(tmp_path), init_model=str(finished_run / "model"))
    original = build_tokenizer(args, other_data)
    assert original.get_vocab() == saved and "zebra" not in saved
    resumed = build_tokenizer(TrainArguments(output_dir=str(tmp_path)), other_data, checkpoint)
    assert resumed.get_vocab() == saved
    other = train_tokenizer(["zebra quartz jukebox"] * 20, vocab_size=280, show_progress=False)
    other.save_pretrained(tmp_path / "other-tokenizer")
    args = TrainArguments(output_dir=str(tmp_path), init_model=str(finished_run / "model"),
                          tokenizer=str(tmp_path / "other-tokenizer"))  # fmt: skip
    with pytest.raises(InputError, match="does not match the tokenizer saved with the weights in .* tokens have other"):
        build_tokenizer(args, other_data)
    args = TrainArguments(output_dir=str(tmp_path), tokenizer=str(finished_run / "model"))
    assert build_tokenizer(args, other_data, checkpoint).get_vocab() == original.get_vocab()  # the same one: fine


def test_a_model_folder_without_a_tokenizer_needs_tokenizer(tmp_path):
    tokenizer = train_tokenizer(["a b c d"] * 10, vocab_size=270, show_progress=False)
    build_model(TrainArguments(d_model=16, layers=1, heads=2, ffn_dim=32), tokenizer).save_pretrained(tmp_path / "m")
    with pytest.raises(InputError, match="comes without a tokenizer .*: pass the tokenizer its weights were trained"):
        build_tokenizer(TrainArguments(output_dir=str(tmp_path), init_model=str(tmp_path / "m")), None)


# ----------------------------------------------------------------------------------------------- 3, 5. flags


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--save-total-limit", "0"], "--save-total-limit must be 1 or more"),
        (["--save-total-limit", "-1"], "--save-total-limit must be 1 or more"),
        (["--num-beams", "0"], "--num-beams must be positive"),
        (["--max-steps", "0"], "--max-steps must be positive"),
        (["--objective", "mlm", "--init-encoder", "x"], "--init-encoder and --init-decoder warm-start a seq2seq"),
        (["--pretrain-steps", "-1"], "--pretrain-steps must be 0 or more"),
        (["--learning-rate", "-0.001"], "--learning-rate must be positive \\(or 0 for the paper's\\)"),
        (["--max-eval-examples", "0"], "--max-eval-examples must be 1 or more"),
        (["--logging-steps", "0"], "--logging-steps must be positive"),
        (["--warmup-steps", "-5"], "--warmup-steps must be 0 or more"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must be positive, or 0 to disable clipping"),
        (["--dropout", "1.5"], "--dropout is a probability"),
        (["--validation-fraction", "0"], "--validation-fraction must be between 0 and 1"),
        (["--d-model", "30", "--heads", "4"], "--d-model \\(30\\) must be a multiple of --heads \\(4\\)"),
        (["--tokenizer", "/no/such/folder"], "--tokenizer /no/such/folder: no such folder"),
        (["--init-model", "./missing-model"], "--init-model ./missing-model: no such folder"),
    ],
)
def test_bad_flags_are_refused_before_any_work_naming_the_flag(argv, message):
    with pytest.raises(InputError, match=message):
        parse_arguments(argv)


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--output-dir .*file is a file; name a folder"):
        parse_arguments(["--output-dir", str(tmp_path / "file")])


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 runs where there is a GPU")
def test_fp16_without_a_gpu_is_refused_saying_what_runs_instead():
    with pytest.raises(InputError, match="fp16 needs a GPU and this machine has none: use --mixed-precision bf16"):
        parse_arguments(["--mixed-precision", "fp16"])


def test_the_cli_prints_the_message_without_a_traceback_and_exits_2(capsys):
    assert main(["--logging-steps", "0"]) == 2
    assert capsys.readouterr().err == "vaswani-train: error: --logging-steps must be positive, got 0.\n"


# ----------------------------------------------------------------------------------------------- 4. lock


def test_a_second_run_in_a_locked_output_folder_names_the_holder_and_exits(tmp_path, capsys):
    with locked_output_folder(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
        assert main([*TINY_RUN, "--output-dir", str(tmp_path), "--max-steps", "1"]) == 2
    message = capsys.readouterr().err
    assert f"is in use by another vaswani-train run (process {os.getpid()} on {socket.gethostname()}" in message
    assert not (tmp_path / "checkpoints").exists()  # refused before any work
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released
    with locked_output_folder(tmp_path):  # and free again
        pass


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    """What kill -9 leaves: a lock file naming a process that is gone (the kernel dropped its flock)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING), locked_output_folder(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"from process {dead_pid} on {socket.gethostname()}, which ended without releasing it" in caplog.text


# ----------------------------------------------------------------------------------------------- 6. bad data


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "empty.jsonl is empty"),
        ("empty.txt", b"", "empty.txt is empty"),
        ("blank.txt", b"\n  \n\n", "blank.txt: no row has text in text"),
        ("latin1.txt", "one\ntwo\nespa\u00f1a\n".encode("latin-1"),
         "latin1.txt line 3 is not UTF-8 text \\(byte 0xf1 at column 5\\)"),
        ("latin1.jsonl", '{"en": "a", "es": "b"}\n{"en": "\u00f1", "es": "c"}\n'.encode("latin-1"),
         "latin1.jsonl line 2 is not UTF-8"),
        ("ragged.csv", b"en,es\na,b\nc,d,e\n", "ragged.csv line 3 has 3 fields but the header has 2"),
        ("short.csv", b"en,es\na,b\nc\n", "short.csv line 3 has 1 fields but the header has 2"),
        ("number.jsonl", b'{"en": "a", "es": "b"}\n{"en": 5, "es": "c"}\n', "number.jsonl row 2: en holds 5, not text"),
    ],
)  # fmt: skip
def test_unreadable_data_stops_naming_the_file_and_line(name, content, message, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    columns = ["text"] if name.endswith(".txt") else ["en", "es"]
    with pytest.raises(InputError, match=message):
        load_raw_dataset(str(path), text_columns=columns)


def test_rows_without_text_are_skipped_with_a_count_or_stop_with_strict_data(tmp_path, caplog):
    rows = [{"en": f"sentence {i}", "es": f"frase {i}"} for i in range(8)]
    rows[2]["es"], rows[5]["en"], rows[6] = None, "   ", {"es": "sin fuente"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with caplog.at_level(logging.WARNING):
        dataset = load_raw_dataset(str(path), validation_fraction=0.2, text_columns=["en", "es"])
    assert f"{path}: skipped 3 of 8 rows whose en or es is missing or blank" in caplog.text
    kept = sorted([*dataset["train"]["en"], *dataset["validation"]["en"]])
    assert kept == [f"sentence {i}" for i in (0, 1, 3, 4, 7)]
    tokenizer = train_tokenizer([f"sentence frase {i}" for i in range(10)], vocab_size=270, show_progress=False)
    assert len(tokenize_pairs(dataset, tokenizer, "en", "es", 16)["train"]) == 4  # no tokenizers TypeError
    with pytest.raises(InputError, match=f"{path} row 3: es is missing or blank; fix or remove the row"):
        load_raw_dataset(str(path), text_columns=["en", "es"], strict=True)
    unchecked = load_raw_dataset(str(path), validation_fraction=0.2)  # a library user's call, without the columns
    tokenized = tokenize_pairs(unchecked, tokenizer, "en", "es", 16)  # skips them too, instead of a TypeError
    assert len(tokenized["train"]) + len(tokenized["validation"]) == 5


# ----------------------------------------------------------------------------------------------- 8. export


def test_an_interrupted_export_leaves_the_previous_model_folder_whole(finished_run, tmp_path):
    model_dir = Path(shutil.copytree(finished_run / "model", tmp_path / "model"))
    before = {path.name: path.read_bytes() for path in model_dir.iterdir()}
    with pytest.raises(KeyboardInterrupt), replacing_folder(model_dir) as folder:
        (folder / "config.json").write_text('{"half": ')  # a kill in the middle of writing
        raise KeyboardInterrupt
    assert {path.name: path.read_bytes() for path in model_dir.iterdir()} == before
    tokenizer = train_tokenizer(["a b c d"] * 10, vocab_size=270, show_progress=False)
    model = build_model(TrainArguments(d_model=16, layers=1, heads=2, ffn_dim=32), tokenizer)
    with replacing_folder(model_dir) as folder:
        save_for_hub(model, tokenizer, folder)
    assert json.loads((model_dir / "config.json").read_text())["d_model"] == 16
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]  # no temporary left behind


def test_sharded_checkpoint_metadata_is_read_with_only_its_own_types(checkpoint, pairs_file, tmp_path):
    """torch.distributed.checkpoint unpickles its `.metadata` (FSDP's sharded checkpoints): a real one passes the
    allow-list, a crafted one is refused before anything loads it."""
    import torch.distributed.checkpoint as dcp

    from vaswani.training.checkpoints import checkpoint_problem

    model = torch.nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"model": model.state_dict()}, checkpoint_id=checkpoint / "pytorch_model_fsdp_0", no_dist=True)
    write_manifest(checkpoint)
    assert checkpoint_problem(checkpoint) is None
    created = tmp_path / "created-by-unpickling"
    (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(CreatesAFile(created)))
    write_manifest(checkpoint)
    assert "open is not a type of checkpoint metadata" in checkpoint_problem(checkpoint)
    assert not created.exists()


def test_a_decoder_alone_needs_tokenizer_and_its_tokenizer_must_match(finished_run, tmp_path):
    decoder = str(finished_run / "model")  # any export with a tokenizer stands in for the causal LM's
    with pytest.raises(InputError, match="--init-decoder .* without --init-encoder: pass the tokenizer"):
        build_tokenizer(TrainArguments(output_dir=str(tmp_path), init_decoder=decoder), None)
    other = train_tokenizer(["zebra quartz jukebox"] * 20, vocab_size=280, show_progress=False)
    other.save_pretrained(tmp_path / "other-tokenizer")
    args = TrainArguments(output_dir=str(tmp_path), init_decoder=decoder, tokenizer=str(tmp_path / "other-tokenizer"))
    with pytest.raises(InputError, match="The tokenizer of --init-decoder .* does not match"):
        build_tokenizer(args, None)


@pytest.mark.parametrize("state", ['{"step": "1"}', '{"step": 1, "command": "rm"}', "[1, 2]", "{not json"])
def test_a_training_state_of_other_fields_or_types_is_refused(state, checkpoint, pairs_file, tmp_path):
    (checkpoint / STATE_FILE).write_text(state)
    write_manifest(checkpoint)
    with pytest.raises(InputError, match=f"{STATE_FILE} cannot be read"):
        resume_from(checkpoint, pairs_file, tmp_path / "out")


def test_a_model_folder_of_pickled_weights_is_refused_unread(tmp_path):
    tokenizer = train_tokenizer(["a b c d"] * 10, vocab_size=270, show_progress=False)
    folder = tmp_path / "m"
    build_model(TrainArguments(d_model=16, layers=1, heads=2, ffn_dim=32), tokenizer).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(CreatesAFile(tmp_path / "unpickled")))
    message = f"--init-model {folder} holds its weights only as pickles \\(pytorch_model.bin\\), which vaswani does not"
    with pytest.raises(InputError, match=message):
        load_pretrained(VaswaniForMaskedLM, str(folder), "--init-model")
    assert not (tmp_path / "unpickled").exists()
