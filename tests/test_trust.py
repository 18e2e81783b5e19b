"""Trust by design: invariants that hold for every file, signal and resume of `vaswani-train`, tested by class.

1. Nothing the run writes lands outside its --output-dir, and no write follows a link planted there.
2. A run never trains on, saves, keeps or exports non-finite weights: it stops before such an update.
3. A resume continues the same run or is refused, naming the options that differ.
4. A folder holding another run's checkpoints is never silently mixed with a new run.
5. SIGTERM and SIGINT end a run with a checkpoint at the current step; a resume then equals the uninterrupted run.
6. Errors a user can cause are ours: a full disk while checkpointing is named and leaves nothing half-written.
"""

import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from conftest import save_pairs_tokenizer, write_pairs_file
from vaswani.configuration.errors import InputError
from vaswani.training import loop
from vaswani.training.__main__ import main
from vaswani.training.arguments import parse_arguments
from vaswani.training.checkpoints import LATEST, CheckpointError, save_checkpoint
from vaswani.training.output_folder import LOCK_FILE
from vaswani.training.run import run

TINY_RUN = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn-dim", "64", "--max-length", "48",
            "--batch-size", "8", "--warmup-steps", "2", "--num-beams", "1", "--max-eval-examples", "2",
            "--pretrain-steps", "0", "--validation-fraction", "0.2", "--lr-scheduler", "inverse_sqrt",
            "--logging-steps", "1", "--eval-steps", "100"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("data")
    pairs = write_pairs_file(folder, 40)
    return ["--dataset", str(pairs), "--tokenizer", str(save_pairs_tokenizer(pairs, folder / "tokenizer"))]


def argv(data, output_dir: Path, *extra: str) -> list[str]:
    return [*TINY_RUN, *data, "--output-dir", str(output_dir), *extra]


def snapshot(folder: Path) -> dict:
    """Every entry under `folder` (links not followed) with its kind, size, content hash and mtime."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        entries[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns, hash(content))
    return entries


# ----------------------------------------------------------------------------------------------- 1. the folder


# What a run reads or writes in its output folder, and what a hostile folder can hold there instead.
RUN_PATHS = [LOCK_FILE, "training_log.json", ".training_log.json.tmp", "loss_curves.png", "checkpoints",
             "checkpoints/latest", "checkpoints/.latest.tmp", "checkpoints/step-0000001", "checkpoints/.step-0000001.tmp",
             "model", ".model.tmp", "tensorboard"]  # fmt: skip
PLANTS = ["symlink to a file outside", "symlink to a folder outside", "dangling symlink", "fifo", "garbage", "folder"]


def plant(path: Path, kind: str, outside: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink to a file outside":
        path.symlink_to(outside / "precious.txt")
    elif kind == "symlink to a folder outside":
        path.symlink_to(outside, target_is_directory=True)
    elif kind == "dangling symlink":
        path.symlink_to(outside / "not-yet-there")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "garbage":
        path.write_bytes(b"\x00\xffgarbage\n")
    else:
        path.mkdir()


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(planted=st.dictionaries(st.sampled_from(RUN_PATHS), st.sampled_from(PLANTS), min_size=1, max_size=3))
def test_a_hostile_output_folder_never_changes_anything_outside_it(planted, data, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    outside, output_dir = base / "outside", base / "out"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    for name, kind in planted.items():
        if not any(Path(name).is_relative_to(other) for other in planted if other != name):
            plant(output_dir / name, kind, outside)
    before = snapshot(outside)
    code = main(argv(data, output_dir, "--max-steps", "1"))
    assert snapshot(outside) == before and (outside / "precious.txt").read_text() == "keep me"
    links_or_fifos = {"fifo"} | {kind for kind in PLANTS if "symlink" in kind}
    if links_or_fifos & set(planted.values()):
        assert code == 2  # refused, naming the entry
    elif code == 0:  # garbage and folders where files belong are replaced or refused; never followed
        assert (output_dir / "model" / "model.safetensors").is_file()


def test_a_planted_link_is_named_before_any_work(data, tmp_path, capsys):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "training_log.json").symlink_to(tmp_path / "elsewhere.json")
    assert main(argv(data, output_dir, "--max-steps", "1")) == 2
    message = capsys.readouterr().err
    assert f"{output_dir / 'training_log.json'} is a symbolic link" in message and "Traceback" not in message
    assert not (output_dir / "checkpoints").exists() and not (tmp_path / "elsewhere.json").exists()


# ----------------------------------------------------------------------------------------------- 2. divergence


def test_a_diverging_run_stops_before_the_update_and_keeps_its_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    real_loss = loop.recipe_loss
    steps = {"count": 0}

    def loss_that_turns_nan_at_the_fourth_step(model, batch, num_items_in_batch, label_smoothing):
        steps["count"] += 1
        loss = real_loss(model, batch, num_items_in_batch, label_smoothing)
        return loss * float("nan") if steps["count"] >= 4 else loss

    monkeypatch.setattr(loop, "recipe_loss", loss_that_turns_nan_at_the_fourth_step)
    code = main(argv(data, tmp_path, "--max-steps", "6", "--save-steps", "2", "--save-total-limit", "1"))
    message = capsys.readouterr().err
    assert code == 1 and "not finite at step 4" in message and "learning rate" in message
    assert (tmp_path / "checkpoints" / LATEST).read_text() == "step-0000002"  # the last good one, kept
    weights = load_file(tmp_path / "checkpoints" / "step-0000002" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert not (tmp_path / "model").exists()  # nothing exported


# ----------------------------------------------------------------------------------------------- 3. resume contract


@pytest.fixture(scope="module")
def two_step_run(data, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("run")
    run(parse_arguments(argv(data, output_dir, "--max-steps", "2", "--save-steps", "1")))
    return output_dir


@pytest.mark.parametrize(
    "change, named",
    [
        (["--learning-rate", "1e-3"], "--learning-rate: 0.004 in the checkpoint, 0.001 now"),
        (["--seed", "7"], "--seed: 42 in the checkpoint, 7 now"),
        (["--batch-size", "4"], "--batch-size: 8 in the checkpoint, 4 now"),
        (["--dropout", "0.1"], "--dropout: 0.0 in the checkpoint, 0.1 now"),
        (["--gradient-accumulation-steps", "2"], "--gradient-accumulation-steps: 1 in the checkpoint, 2 now"),
        (["--lr-scheduler", "linear"], "--lr-scheduler: 'inverse_sqrt' in the checkpoint, 'linear' now"),
    ],
)  # fmt: skip
def test_a_resume_with_other_defining_options_is_refused_naming_both_values(change, named, two_step_run, data):
    with pytest.raises(InputError, match=named.replace("(", r"\(")):
        run(parse_arguments(argv(data, two_step_run, "--max-steps", "3", "--resume", "latest", *change)))


def test_a_linear_schedule_is_bound_to_its_max_steps_an_inverse_square_root_is_not(data, tmp_path):
    linear = [*argv(data, tmp_path / "linear", "--save-steps", "1"), "--lr-scheduler", "linear"]
    run(parse_arguments([*linear, "--max-steps", "2"]))
    with pytest.raises(InputError, match="--max-steps: 2 in the checkpoint, 4 now.*decays to 0 at --max-steps"):
        run(parse_arguments([*linear, "--max-steps", "4", "--resume", "latest"]))
    extended = argv(data, tmp_path / "sqrt", "--save-steps", "1")
    run(parse_arguments([*extended, "--max-steps", "2"]))
    result = run(parse_arguments([*extended, "--max-steps", "3", "--resume", "latest"]))
    assert result.state.step == 3
    recorded = json.loads((tmp_path / "sqrt" / "model" / "training_args.json").read_text())
    assert recorded["max_steps"] == 3  # what actually ran


# ----------------------------------------------------------------------------------------------- 4. no mixing


def test_a_new_run_in_a_folder_with_another_runs_checkpoints_is_refused(two_step_run, data):
    with pytest.raises(InputError, match="holds the checkpoints of another run .*step-0000002.*--resume latest"):
        run(parse_arguments(argv(data, two_step_run, "--max-steps", "1")))


def test_continuing_another_folders_checkpoint_in_a_folder_with_checkpoints_is_refused(two_step_run, data, tmp_path):
    elsewhere = Path(shutil.copytree(two_step_run, tmp_path / "copy")) / "checkpoints" / "step-0000002"
    with pytest.raises(InputError, match=f"holds the checkpoints of another run .*continuing {elsewhere} here"):
        run(parse_arguments(argv(data, two_step_run, "--max-steps", "3", "--resume", str(elsewhere))))


def test_resuming_an_older_checkpoint_of_the_folder_is_refused(two_step_run, data):
    older = two_step_run / "checkpoints" / "step-0000001"
    with pytest.raises(InputError, match="is not the newest checkpoint .*step-0000002 is"):
        run(parse_arguments(argv(data, two_step_run, "--max-steps", "3", "--resume", str(older))))


@pytest.mark.parametrize(
    "latest, named", [("folder", "latest is a folder, where the run writes a file"),
                      ("unreadable bytes", "latest is not a readable file naming a checkpoint")],
)  # fmt: skip
def test_a_latest_that_is_no_readable_file_is_refused_not_taken_for_no_checkpoint(latest, named, two_step_run, data,
                                                                                  tmp_path):  # fmt: skip
    copy = Path(shutil.copytree(two_step_run, tmp_path / "copy"))
    (copy / "checkpoints" / LATEST).unlink()
    if latest == "folder":
        (copy / "checkpoints" / LATEST).mkdir()
    else:
        (copy / "checkpoints" / LATEST).write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match=named):
        run(parse_arguments(argv(data, copy, "--max-steps", "3", "--resume", "latest")))


# ----------------------------------------------------------------------------------------------- 5. signals


def launch(arguments: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "vaswani.training", *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run_to_the_end(arguments: list[str]) -> int:
    process = launch(arguments)
    process.communicate(timeout=300)
    return process.returncode


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_a_random_step_saves_it_and_a_resume_equals_the_uninterrupted_run(stop, data, tmp_path):
    """Every run in a fresh process of its own: the test worker's process carries global torch settings that other
    tests in it may have changed, and the comparison is exact."""
    options = [*TINY_RUN, *data, "--max-steps", "200", "--save-steps", "1000", "--dropout", "0.1"]
    assert run_to_the_end([*options, "--output-dir", str(tmp_path / "whole")]) == 0
    process = launch([*options, "--output-dir", str(tmp_path / "stopped")])
    for line in process.stdout:
        if line.startswith("Batch per step"):
            break
    time.sleep(random.uniform(0.0, 0.2))  # somewhere in the 200 steps
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + stop, stderr[-2000:]
    assert f"stopped by {stop.name} at step" in stderr and "of 200" in stderr and "--resume latest" in stderr
    assert "Traceback" not in stderr
    assert run_to_the_end([*options, "--output-dir", str(tmp_path / "stopped"), "--resume", "latest"]) == 0
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "model" / "model.safetensors")
    assert all(torch.equal(resumed[name], weight) for name, weight in whole.items())


# ----------------------------------------------------------------------------------------------- 6. errors are ours


def test_a_full_disk_while_checkpointing_is_named_and_leaves_nothing_half_written(two_step_run, tmp_path, monkeypatch):
    copy = Path(shutil.copytree(two_step_run, tmp_path / "copy"))

    class FullDisk:
        is_main_process, process_index, num_processes, device = True, 0, 1, torch.device("cpu")

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        def reduce(self, tensor, reduction="sum"):
            return tensor

    state = loop.TrainingState(step=3)
    with pytest.raises(CheckpointError, match="Could not write the checkpoint .*step-0000003.*No space left.*--resume"):
        save_checkpoint(FullDisk(), state, copy, keep=2)
    root = copy / "checkpoints"
    assert sorted(path.name for path in root.iterdir()) == [LATEST, "step-0000001", "step-0000002"]
    assert (root / LATEST).read_text() == "step-0000002"


def test_only_the_loss_is_checked_where_a_grad_scaler_or_deepspeed_owns_the_gradients():
    plain, scaled = SimpleNamespace(scaler=None), SimpleNamespace(scaler=object())
    assert loop.finite_step(plain, 2.5, torch.tensor(1.0)) and not loop.finite_step(plain, 2.5, torch.tensor(math.inf))
    assert not loop.finite_step(plain, math.nan, torch.tensor(1.0))
    assert loop.finite_step(scaled, 2.5, torch.tensor(math.inf))  # fp16: the scaler skips that update itself
    assert loop.finite_step(plain, 2.5, None) and not loop.finite_step(scaled, math.inf, None)  # DeepSpeed: no norm


def test_a_bad_row_in_the_middle_of_a_streamed_file_is_named(data, tmp_path, capsys):
    rows = [json.dumps({"en": f"In the beginning {i}.", "es": f"En el principio {i}."}) for i in range(60)]
    rows[45] = '{"en": "broken row, "es": 3'
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    options = [*TINY_RUN, "--dataset", str(pairs), *data[2:], "--output-dir", str(tmp_path / "out"), "--max-steps", "2"]
    assert main([*options, "--streaming", "--validation-examples", "10", "--shuffle-buffer", "8"]) == 2
    message = capsys.readouterr().err
    assert f"--dataset {pairs} cannot be read as a stream: " in message  # then what the parser met there
    assert "Traceback" not in message


def test_a_full_disk_while_exporting_is_one_line_naming_the_file(data, tmp_path, monkeypatch, capsys):
    run_module = sys.modules["vaswani.training.run"]  # the module: `vaswani.training.run` is also its function

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / ".model.tmp" / "model.safetensors"))

    monkeypatch.setattr(run_module, "save_for_hub", full_disk)
    assert main(argv(data, tmp_path / "out", "--max-steps", "1")) == 1
    message = capsys.readouterr().err
    assert "vaswani-train: error: [Errno 28] No space left on device" in message and ".model.tmp" in message
    assert "Traceback" not in message and not (tmp_path / "out" / ".model.tmp").exists()  # nothing half-written


# ----------------------------------------------------------------------------------------------- the writers


def test_atomic_writes_replace_links_instead_of_following_them_and_name_what_is_in_the_way(tmp_path):
    from vaswani.configuration.files import temporary_name, temporary_sibling, write_atomically

    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    target = tmp_path / "out" / "log.json"
    target.parent.mkdir()
    target.symlink_to(outside)
    temporary_name(target).symlink_to(outside)  # a link planted where the new version is first written
    write_atomically(target, "new")
    assert outside.read_text() == "keep me" and not target.is_symlink() and target.read_text() == "new"
    (tmp_path / "out" / "folder.json").mkdir()
    with pytest.raises(InputError, match="folder.json is a folder where a file is to be written"):
        write_atomically(tmp_path / "out" / "folder.json", "x")
    (tmp_path / "out" / "blocking").write_text("a file")
    with pytest.raises(InputError, match="blocking is a file where a folder is to be made"):
        temporary_sibling(tmp_path / "out" / "blocking" / "model")


def test_a_lock_file_that_cannot_be_opened_is_named(tmp_path):
    from vaswani.training.output_folder import take_lock

    (tmp_path / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match=f"Cannot open the lock file {tmp_path / LOCK_FILE}"):
        take_lock(tmp_path / LOCK_FILE)
    assert not (tmp_path / "elsewhere").exists()
