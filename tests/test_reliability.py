"""Faults a user or a cluster causes: a full disk or a kill during a checkpoint save, a run
that diverges, SIGTERM, bad options and files. None loses a good checkpoint; each ends
with one clear line and a non-zero exit."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from lit_bioplaus import CounterHebb, DirectFeedbackAlignment, FeedbackAlignment, fault_tolerance
from lit_bioplaus.cli import cli_main, main
from lit_bioplaus.fault_tolerance import SIGTERM_CHECKPOINT, SIGTERM_EXIT_STATUS, AtomicCheckpointIO
from lit_bioplaus.io import stale_temporaries
from lit_bioplaus.nn import MLP

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FAST = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
        "false"]  # fmt: skip


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m lit_bioplaus ARGS`` from ``cwd``, with the checkout importable (for
    tests.fault_injection)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    environment.pop("LIT_BIOPLAUS_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lit_bioplaus", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- checkpoints are atomic ---------------------------------------------------------------
def test_a_full_disk_during_a_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def full_disk(checkpoint, file):
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fault_tolerance.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


KILLED_SAVE = """
import sys, time
from pathlib import Path
import torch
from lit_bioplaus import fault_tolerance
io = fault_tolerance.AtomicCheckpointIO()
path = Path(sys.argv[1])
io.save_checkpoint({"step": torch.tensor(1)}, path)
def slow_save(checkpoint, file):
    Path(file).write_bytes(b"the first half of a checkpoint")
    print("writing", flush=True)
    time.sleep(60)
fault_tolerance.torch.save = slow_save
io.save_checkpoint({"step": torch.tensor(2)}, path)
"""


@pytest.mark.parametrize("folder", ["same file system", "other file system"])
def test_a_kill_during_a_save_never_leaves_the_checkpoint_unloadable(folder, tmp_path):
    """SIGKILL while the new checkpoint is being written: the old one still loads, whether
    the checkpoint folder is on the temporary folder's file system or another one."""
    if folder == "other file system":
        if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
            pytest.fail("this machine has no second file system (/dev/shm) to test with")
        directory = Path("/dev/shm") / f"lit_bioplaus_{os.getpid()}_{time.monotonic_ns()}"
    else:
        directory = tmp_path / "checkpoints"
    try:
        path = directory / "last.ckpt"
        environment = {**os.environ, "TMPDIR": str(tmp_path)}
        process = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], stdout=subprocess.PIPE,
                                   env=environment, text=True)  # fmt: skip
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert torch.load(path, weights_only=True)["step"] == 1
        assert len(stale_temporaries(path)) == 1  # the killed save's half-written file
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, path)  # the next save clears it
        assert not stale_temporaries(path) and torch.load(path, weights_only=True)["step"] == 3
    finally:
        if folder == "other file system":
            for file in directory.glob("*"):
                file.unlink()
            directory.rmdir()


# --- divergence ---------------------------------------------------------------------------
def test_a_run_that_diverges_stops_with_an_error_and_keeps_its_good_checkpoint(tmp_path):
    """Weights turn NaN in epoch 1 (step 60; 41 steps per epoch): the run stops with one
    error line and status 1, and the checkpoint of epoch 0 is still the finite one."""
    result = run_cli("fit", "--config", QUICKSTART, *FAST, "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.callbacks+=tests.fault_injection.PoisonWeights", "--trainer.callbacks.at_step", "60",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: training diverged at step") and "not finite" in line
    assert "Traceback" not in result.stderr
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert checkpoints == ["best.ckpt", "last.ckpt"]  # the recipe keeps both
    for name in checkpoints:
        state = torch.load(tmp_path / "checkpoints" / name, weights_only=False)
        assert state["global_step"] == 41
        assert all(torch.isfinite(value).all() for value in state["state_dict"].values())


def test_non_finite_weights_are_never_saved(tmp_path):
    model = main(["--config", QUICKSTART, *FAST], run=False).model
    with torch.no_grad():
        model.network[1].weight[0, 0] = float("inf")
    with pytest.raises(fault_tolerance.DivergenceError, match=r"parameter network\.1\.weight is not finite"):
        model.on_save_checkpoint({})


# --- SIGTERM --------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_exits_non_zero_and_resumes_exactly(tmp_path):
    steps = ["--trainer.max_steps", "60", "--trainer.max_epochs", "-1", "--test_after_fit", "false"]
    result = run_cli("fit", "--config", QUICKSTART, *FAST, *steps, "--trainer.default_root_dir", str(tmp_path / "cut"),
                     "--trainer.callbacks+=tests.fault_injection.TerminateAt", "--trainer.callbacks.at_step", "25",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == SIGTERM_EXIT_STATUS, result.stderr[-2000:]
    checkpoint = tmp_path / "cut" / "checkpoints" / SIGTERM_CHECKPOINT
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 25  # mid-epoch 0
    common = ["fit", "--config", QUICKSTART, *FAST, *steps]
    resumed = main([*common, "--trainer.default_root_dir", str(tmp_path / "resumed"), "--ckpt_path", str(checkpoint)])
    straight = main([*common, "--trainer.default_root_dir", str(tmp_path / "straight")])
    assert resumed.trainer.global_step == straight.trainer.global_step == 60
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6)


def test_a_mid_epoch_resume_with_another_batch_size_is_refused(tmp_path, capsys):
    checkpoint_every = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                        f"--trainer.callbacks.dirpath={tmp_path / 'mid'}", "--trainer.callbacks.every_n_train_steps=10",
                        "--trainer.callbacks.filename=mid"]  # fmt: skip
    main(["fit", "--config", QUICKSTART, *FAST, "--trainer.max_steps", "10", "--test_after_fit", "false",
          "--trainer.default_root_dir", str(tmp_path), *checkpoint_every])  # fmt: skip
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", QUICKSTART, *FAST, "--trainer.default_root_dir", str(tmp_path / "again"),
                  "--data.init_args.batch_size", "16", "--ckpt_path", str(tmp_path / "mid" / "mid.ckpt")])  # fmt: skip
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        "error: cannot resume mid-epoch: the checkpoint stopped 10 batches into an epoch, but batch_size 32 -> 16; "
        "resume with the same settings, or from an end-of-epoch checkpoint"
    )


# --- one clear line ------------------------------------------------------------------------
@pytest.fixture
def checkpoint_of_counter_hebb(tmp_path):
    main(["fit", "--config", str(ROOT / "configs" / "quickstart_ch.yaml"), *FAST, "--trainer.max_epochs", "1",
          "--test_after_fit", "false", "--trainer.default_root_dir", str(tmp_path / "ch")])  # fmt: skip
    return tmp_path / "ch" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--data.init_args.batch_size", "0"], "error: batch_size must be positive"),
        (["--model.init_args.gradient_clip_val", "-1"], "error: gradient_clip_val must be in (0, inf], got -1.0"),
        (["--model.init_args.num_classes", "5"], "error: --model.init_args.num_classes 5 disagrees with the data"),
        (["--model", "lit_bioplaus.CounterHebb", "--model.init_args.network.init_args.activation", "tanh"],
         "error: CounterHebb gates its top-down pass with ReLU (GaLU), which is not the derivative of tanh"),
        (["--ddp_timeout", "5"], "error: --ddp_timeout applies to DDP strategies, not SingleDeviceStrategy"),
        (["--config", "ZOO_IN_FILE"], "error: `zoo: bp_mlp128_digits` in a config file does nothing"),
        (["--ckpt_path", "CORRUPT"], "error: cannot read checkpoint"),
        (["--ckpt_path", "MISSING"], "error: --ckpt_path"),
        (["--ckpt_path", "COUNTER_HEBB"], "was trained by lit_bioplaus.algorithms.CounterHebb, but the config's model"),
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line(arguments, expected, tmp_path, capsys, request):
    substitutes = {"CORRUPT": tmp_path / "corrupt.ckpt", "MISSING": tmp_path / "missing.ckpt"}
    substitutes["CORRUPT"].write_bytes(b"\x80\x04not a checkpoint at all")
    substitutes["ZOO_IN_FILE"] = tmp_path / "zoo.yaml"
    substitutes["ZOO_IN_FILE"].write_text("zoo: bp_mlp128_digits\n")
    if "COUNTER_HEBB" in arguments:
        substitutes["COUNTER_HEBB"] = request.getfixturevalue("checkpoint_of_counter_hebb")
    arguments = [str(substitutes.get(argument, argument)) for argument in arguments]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", QUICKSTART, *FAST, "--trainer.default_root_dir", str(tmp_path), *arguments])
    assert exit_info.value.code not in (0, None)
    stderr = capsys.readouterr().err + (exit_info.value.code if isinstance(exit_info.value.code, str) else "")
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert expected in line, line


@pytest.mark.parametrize("rule", [CounterHebb, FeedbackAlignment, DirectFeedbackAlignment])
@pytest.mark.parametrize("activation", ["tanh", "elu", "sigmoid", "leaky_relu"])
def test_counter_hebb_rules_refuse_activations_without_a_galu_td_pass(rule, activation):
    mode = "shared" if rule is CounterHebb else "fixed"
    with pytest.raises(ValueError, match=f"not the derivative of {activation}: use activation 'relu'"):
        rule(network=partial(MLP, hidden=[5], activation=activation, weight_mode=mode), input_shape=(1, 4, 4))


def test_a_stalled_ddp_peer_ends_the_run_within_the_timeout(tmp_path):
    """Rank 1 hangs at step 3; rank 0 waits in the gradient all-reduce for --ddp_timeout
    (10 s here, 300 s by default on CPU) and the run fails instead of waiting 30 minutes."""
    start = time.monotonic()
    result = run_cli("fit", "--config", QUICKSTART, *FAST, "--trainer.default_root_dir", str(tmp_path),
                     "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                     "--ddp_timeout", "10", "--trainer.max_steps", "6", "--test_after_fit", "false",
                     "--trainer.callbacks+=tests.fault_injection.StallRank", "--trainer.callbacks.rank", "1",
                     "--trainer.callbacks.at_step", "3", "--trainer.callbacks.seconds", "240",
                     cwd=tmp_path)  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert elapsed < 120, elapsed
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: a DDP process stopped answering") and "Timed out waiting 10000ms" in line, line


def test_a_checkpoint_of_another_network_is_refused(checkpoint_of_counter_hebb, tmp_path, capsys):
    config = str(ROOT / "configs" / "quickstart_ch.yaml")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", "--config", config, *FAST, "--trainer.default_root_dir", str(tmp_path),
                  "--model.init_args.network.init_args.hidden", "[64]", "--ckpt_path",
                  str(checkpoint_of_counter_hebb)])  # fmt: skip
    (line,) = error_lines(str(exit_info.value.code))
    assert line.endswith("was trained with another network: network.init_args.hidden [128] (config [64])")


def test_without_a_validation_split_the_recipe_still_keeps_last(tmp_path):
    main(["fit", "--config", QUICKSTART, *FAST, "--trainer.max_epochs", "1", "--data.init_args.val_fraction", "0",
          "--test_after_fit", "false", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_negative_warm_up_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(ROOT / "configs" / "quickstart_ccl.yaml"), *FAST,
                  "--model.init_args.warmup_steps", "-5"])  # fmt: skip
    assert error_lines(capsys.readouterr().err) == ["error: warmup_steps must be in [0, inf], got -5"]


@pytest.mark.parametrize(
    ("saved", "resumed", "remedy"),
    [
        ("false", "null", "resume it with --model.init_args.merge_optimizers false"),
        ("null", "false", "resume it with --model.init_args.merge_optimizers true"),
    ],
    ids=["two_into_one", "one_into_two"],
)
def test_counter_current_checkpoint_of_the_other_optimizer_layout_is_refused_in_one_line(
    saved, resumed, remedy, tmp_path, capsys
):
    config = str(ROOT / "configs" / "quickstart_ccl.yaml")
    main(["fit", "--config", config, *FAST, "--trainer.max_steps", "2", "--test_after_fit", "false",
          "--model.init_args.merge_optimizers", saved, "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    (checkpoint,) = (tmp_path / "checkpoints").glob("last*.ckpt")
    states = 2 if saved == "false" else 1
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", config, *FAST, "--trainer.default_root_dir", str(tmp_path / "again"),
                  "--model.init_args.merge_optimizers", resumed, "--ckpt_path", str(checkpoint)])  # fmt: skip
    assert error_lines(capsys.readouterr().err) == [
        f"error: the checkpoint holds {states} optimizer states and this CounterCurrent has {3 - states} "
        f"optimizer(s): {remedy}"
    ]


def test_out_of_memory_and_corrupt_data_are_explained():
    from lit_bioplaus.data import DatasetCorruptError
    from lit_bioplaus.errors import explain

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("while training") from inner
    except RuntimeError as err:
        assert explain(err) == (
            "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): lower --data.batch_size "
            "(and --data.eval_batch_size)"
        )
    corrupt = DatasetCorruptError("data/train-images-idx3-ubyte", "bad magic number 1234")
    assert explain(corrupt) == str(corrupt) and "bad magic number 1234" in str(corrupt)
    assert explain(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None  # a bug keeps its traceback
