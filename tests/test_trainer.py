"""The training loop: learning, mesh independence, resumption, corruption, divergence, CLI."""

import gc
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest

from gtr_jax.train import abandoned_reads, checkpoints, trainer
from gtr_jax.cli import main as cli
from gtr_jax.errors import UserError

TESTS = pathlib.Path(__file__).resolve().parent
TRAIN_GIN = str(TESTS / "tiny_train.gin")


def train(model_dir, steps, *bindings):
    """Run the tiny training in-process with extra gin bindings; returns the final state."""
    gin.clear_config()
    try:
        cli.parse_gin([TRAIN_GIN], [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", *bindings], [str(TESTS)])
        return trainer.train()
    finally:
        gin.clear_config()


def logged(model_dir, key="loss"):
    """{step: value} of one metric from metrics.jsonl."""
    rows = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    return {row["step"]: row[key] for row in rows if key in row}


def final_params(model_dir):
    params, step = checkpoints.restore_params(str(model_dir))
    return step, jax.tree.map(np.asarray, params)


def test_training_lowers_the_loss_and_raises_accuracy(tmp_path):
    train(tmp_path, 30, "train.log_every = 10")
    loss, accuracy = logged(tmp_path), logged(tmp_path, "acc_q2p")
    assert loss[30] < 0.5 * loss[10], loss
    assert accuracy[30] > accuracy[10] + 0.2, accuracy
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint_30"]
    assert {"model_config.json", "config.gin", "metrics.jsonl", "tensorboard"} <= set(os.listdir(tmp_path))
    assert os.listdir(tmp_path / "tensorboard")


def test_same_loss_trajectory_on_every_mesh(tmp_path):
    # Dropout stays on: its masks must not depend on how the batch is split.
    trajectories = {}
    for shape, devices in [((1, 1), 1), ((8, 1), 8), ((4, 2), 8)]:
        model_dir = tmp_path / f"mesh{shape[0]}x{shape[1]}"
        train(model_dir, 5, f"make_mesh.mesh_shape = {shape}", f"make_mesh.num_devices = {devices}")
        trajectories[shape] = logged(model_dir)
    reference = trajectories[(1, 1)]
    assert len(reference) == 5
    for shape, losses in trajectories.items():
        # Step 1 is the same parameters on the same batch and dropout masks: equal to float32 rounding.
        np.testing.assert_allclose(losses[1], reference[1], rtol=1e-5, err_msg=str(shape))
        # Later steps follow updates from gradients summed in another order on each mesh (XLA's
        # CPU reductions differ by host too). Adafactor divides every gradient entry by its own
        # root-mean-square, so rounding-level differences in entries whose gradient is near zero
        # become visible: up to 2.4e-4 relative by step 5 on an AMD EPYC host without AVX-512,
        # under 1e-5 on AVX-512 hosts. A mesh-dependent batch split, dropout mask or gradient
        # reduction moves these losses by percents.
        np.testing.assert_allclose([losses[s] for s in range(2, 6)], [reference[s] for s in range(2, 6)], rtol=2e-3,
                                   err_msg=str(shape))


def test_restores_onto_another_mesh_shape(tmp_path):
    train(tmp_path / "straight", 6, "make_mesh.mesh_shape = (8, 1)")
    # Stop after 3 steps of the same 6-step schedule, then go on on a 2×4 mesh.
    train(tmp_path / "moved", 6, "make_mesh.mesh_shape = (8, 1)", "train.checkpoint_every = 3", "train.train_steps = 3")
    train(tmp_path / "moved", 6, "make_mesh.mesh_shape = (2, 4)")
    straight, moved = logged(tmp_path / "straight"), logged(tmp_path / "moved")
    np.testing.assert_allclose([moved[s] for s in (4, 5, 6)], [straight[s] for s in (4, 5, 6)], atol=1e-5, rtol=1e-5)


def test_starts_from_an_init_checkpoint(tmp_path):
    train(tmp_path / "pretrained", 2)
    _, pretrained = final_params(tmp_path / "pretrained")
    # A zero learning rate leaves the initial params untouched.
    train(tmp_path / "finetuned", 2, f"train.init_checkpoint = '{tmp_path / 'pretrained'}'",
          "adafactor.base_learning_rate = 0.0")
    _, finetuned = final_params(tmp_path / "finetuned")
    jax.tree.map(np.testing.assert_array_equal, finetuned, pretrained)


def test_init_checkpoint_of_another_shape_is_refused(tmp_path):
    train(tmp_path / "pretrained", 1)
    with pytest.raises(trainer.UserError, match="does not fit the configured model.*d_model 64 vs 32"):
        train(tmp_path / "finetuned", 1, f"train.init_checkpoint = '{tmp_path / 'pretrained'}'", "T5Config.d_model = 32")


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    train(tmp_path, 4, "train.checkpoint_every = 2")
    newest = tmp_path / "checkpoints" / "checkpoint_4"
    data_files = sorted((p for p in newest.rglob("*") if p.is_file() and "params" in p.parts), key=lambda p: p.stat().st_size)
    biggest = data_files[-1]
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    capsys.readouterr()
    state = train(tmp_path, 6, "train.checkpoint_every = 2")
    out = capsys.readouterr().out
    assert "checkpoint 4 is unreadable" in out and "corrupt_checkpoints" in out
    assert int(state.step) == 6
    assert (tmp_path / "corrupt_checkpoints" / "checkpoint_4").is_dir()
    # Steps 3 and 4 were trained twice: once before the damage, once after resuming from step 2.
    rows = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [1, 2, 3, 4, 3, 4, 5, 6]
    # The warning names the damaged file (orbax's innermost error), not orbax's TensorStore dump.
    assert "checkpoint_4/params" in out and "TensorStore" not in out

    # Damaged metadata is damage too.
    (tmp_path / "checkpoints" / "checkpoint_6" / "opt_state" / "_METADATA").write_text("{not json")
    capsys.readouterr()
    assert int(train(tmp_path, 8, "train.checkpoint_every = 2").step) == 8
    assert "checkpoint 6 is unreadable (opt_state metadata: " in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "corrupt_checkpoints")) == ["checkpoint_4", "checkpoint_6"]


def test_checkpoints_of_another_model_or_optimizer_stop_the_run_and_stay_put(tmp_path):
    train(tmp_path, 2, "train.checkpoint_every = 2")
    learnt = tmp_path / "learnt"
    train(learnt, 2, "train.checkpoint_every = 2", "train.learn_temperature = True")
    before = {directory: sorted(p.relative_to(directory) for p in directory.rglob("*")) for directory in (tmp_path, learnt)}
    changes = [
        (tmp_path, "ModelConfig.embed_dim = 16", r"embed_dim 32 vs 16"),
        (tmp_path, "T5Config.scan_layers = True", r"scan_layers False vs True"),
        (tmp_path, "adafactor.min_dim_size_to_factor = 1", r"its opt_state differs .*0/v/0/encoder/.* \(64, 64\) vs \(1,\)"),
        (tmp_path, "train.learn_temperature = True", r"has no learnt temperature"),
        (learnt, "train.learn_temperature = False", r"its opt_state differs .*log_temperature only in the checkpoint"),
    ]
    for model_dir, change, message in changes:
        with pytest.raises(UserError, match=message + ".*train into a new MODEL_DIR"):
            train(model_dir, 4, "train.checkpoint_every = 2", change)
    after = {directory: sorted(p.relative_to(directory) for p in directory.rglob("*")) for directory in (tmp_path, learnt)}
    assert after == before, "nothing moved aside, nothing rewritten"
    assert int(train(tmp_path, 4, "train.checkpoint_every = 2").step) == 4, "the unchanged run still resumes"


def test_a_damaged_checkpoint_leaves_no_stray_tracebacks(tmp_path, monkeypatch, caplog, recwarn):
    """When a read fails, orbax abandons the reads still in flight. Each one reports an error
    (with a TensorStore dump) when it ends, as an unraisable exception, through asyncio's
    logger or as a "never awaited" warning; those reports are dropped."""
    train(tmp_path, 2, "train.checkpoint_every = 2")
    data = max((p for p in (tmp_path / "checkpoints" / "checkpoint_2" / "params").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: unraisable.append(report.exc_value))

    def fail_to_restore():
        with pytest.raises(UserError, match="checkpoint 2 is unreadable"):
            checkpoints.restore_params(str(tmp_path))
        gc.collect()
        time.sleep(0.2)  # the abandoned reads end on TensorStore's threads

    def noise():
        logged = [record.getMessage() for record in caplog.records if record.name == "asyncio"]
        warned = [str(warning.message) for warning in recwarn if "never awaited" in str(warning.message)]
        return unraisable + logged + warned

    with monkeypatch.context() as unfiltered:
        unfiltered.setattr(abandoned_reads, "silence", lambda checkpoint_dir: None)
        unfiltered.setattr(logging.getLogger("asyncio"), "filters", [])
        for _ in range(5):  # 1 to 3 tries were needed in 20 trials
            fail_to_restore()
            if noise():
                break
        assert noise(), "the abandoned reads report errors when nothing filters them"
    fail_to_restore()
    unraisable.clear()  # some may have ended before the filter was installed
    caplog.clear()
    recwarn.clear()
    for _ in range(3):
        fail_to_restore()
    time.sleep(1)  # let every abandoned read end while the test's hook is still in place
    gc.collect()
    assert not noise(), noise()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    train(tmp_path, 4, "train.checkpoint_every = 2", "train.log_every = 2")
    _, before = final_params(tmp_path)
    # τ = 0 divides the logits by zero from the first resumed step on.
    with pytest.raises(trainer.TrainingDiverged, match=r"NaN or infinite at step 5.*last good checkpoint is step 4"):
        train(tmp_path, 8, "train.checkpoint_every = 2", "train.log_every = 2", "train.temperature = 0.0")
    step, after = final_params(tmp_path)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, after, before)


def cli_command(model_dir, steps, *extra):
    return [sys.executable, "-m", "gtr_jax", "train", f"--gin_file={TRAIN_GIN}", f"--gin_search_paths={TESTS}",
            f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}", *extra]


def subprocess_env(devices=8):
    return {**os.environ, "PYTHONPATH": str(TESTS), "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def assert_resumes_bit_equal_after_kill(tmp_path, command, env):
    """`command(model_dir)` (a slowed 24-step run, a checkpoint every 4) killed with -9 after checkpoint 8
    and rerun ends with the parameters of an uninterrupted run, bit for bit."""
    subprocess.run(command(tmp_path / "straight"), env=env, check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(command(interrupted), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (interrupted / "checkpoints" / "checkpoint_8").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (interrupted / "checkpoints" / "checkpoint_8").exists()
    assert not (interrupted / "checkpoints" / "checkpoint_24").exists(), "the run finished before it was killed"

    subprocess.run(command(interrupted), env=env, check=True, capture_output=True)
    step_a, straight = final_params(tmp_path / "straight")
    step_b, resumed = final_params(interrupted)
    assert step_a == step_b == 24
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_kill_and_resume_ends_bit_equal_to_an_uninterrupted_run(tmp_path):
    common = ["--gin.train.checkpoint_every=4", "--gin.synthetic_pairs.step_delay=0.15"]
    assert_resumes_bit_equal_after_kill(tmp_path, lambda model_dir: cli_command(model_dir, 24, *common),
                                        subprocess_env())


def test_sigterm_checkpoints_the_step_reached_exits_0_and_resumes_bit_equal(tmp_path):
    # What a Cloud TPU spot VM's preemption notice does to a run.
    common = ["--gin.train.checkpoint_every=100", "--gin.synthetic_pairs.step_delay=0.15"]
    subprocess.run(cli_command(tmp_path / "straight", 24, *common), env=subprocess_env(), check=True, capture_output=True)

    preempted = tmp_path / "preempted"
    process = subprocess.Popen(cli_command(preempted, 24, *common), env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (preempted / "operative_config.gin").exists() and time.time() < deadline:  # after the first step
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    saved = [int(p.name.split("_")[-1]) for p in (preempted / "checkpoints").glob("checkpoint_*")]
    assert len(saved) == 1 and 1 <= saved[0] < 24, saved  # not a scheduled checkpoint: every 100 steps
    assert f"preempted: saved step {saved[0]} of 24 in {preempted}" in stdout

    subprocess.run(cli_command(preempted, 24, *common), env=subprocess_env(), check=True, capture_output=True)
    step_a, straight = final_params(tmp_path / "straight")
    step_b, resumed = final_params(preempted)
    assert step_a == step_b == 24
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_two_processes_match_one(tmp_path):
    subprocess.run(cli_command(tmp_path / "one", 4), env=subprocess_env(8), check=True, capture_output=True)
    port = 20000 + os.getpid() % 20000
    processes = [
        subprocess.Popen(cli_command(tmp_path / "two", 4, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                     f"--process_id={i}"), env=subprocess_env(4),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    one, two = logged(tmp_path / "one"), logged(tmp_path / "two")
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], atol=1e-5, rtol=1e-5)


def test_gin_mistakes_are_one_line(tmp_path, capsys):
    def error(*argv):
        gin.clear_config()
        try:
            assert cli.main(["train", *argv]) == 1
        finally:
            gin.clear_config()
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    assert "nope.gin" in error("--gin_file=nope.gin")
    assert "No configurable matching 'trian'" in error(f"--gin_file={TRAIN_GIN}", f"--gin_search_paths={TESTS}",
                                                        f"--gin.MODEL_DIR={tmp_path}", "--gin.TRAIN_STEPS=1",
                                                        "--gin.trian.seed=3")
    assert "BATCH_SIZE 12 must be divisible" in error(f"--gin_file={TRAIN_GIN}", f"--gin_search_paths={TESTS}",
                                                       f"--gin.MODEL_DIR={tmp_path}", "--gin.TRAIN_STEPS=1",
                                                       "--gin.train.batch_size=12")


def test_a_bad_loss_option_is_one_line_before_anything_is_built(tmp_path, capsys):
    # gin builds LossConfig when it calls train, so the mistake stops the run before initialization.
    gin.clear_config()
    try:
        status = cli.main(["train", f"--gin_file={TRAIN_GIN}", f"--gin_search_paths={TESTS}",
                           f"--gin.MODEL_DIR={tmp_path / 'model'}", "--gin.TRAIN_STEPS=1",
                           "--gin.LossConfig.pair_alpha=2"])
    finally:
        gin.clear_config()
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "pair_alpha" in err, err
    assert not (tmp_path / "model").exists()


def test_writes_the_full_and_the_operative_gin_config(tmp_path):
    # τ is fixed, so temperature_from_log is bound but never called: only the full config has it.
    train(tmp_path, 2, "temperature_from_log.max_temperature = 0.5")
    full = (tmp_path / "config.gin").read_text()
    operative = (tmp_path / "operative_config.gin").read_text()
    assert "temperature_from_log.max_temperature = 0.5" in full
    assert "temperature_from_log" not in operative
    for used in ("LossConfig.same_tower = 'query'", "train.batch_size = 16"):
        assert used in full and used in operative, (used, operative)
    # The operative config also records the defaults the run used, which no file bound.
    assert "synthetic_pairs.num_pairs = 64" in operative and "synthetic_pairs.num_pairs" not in full
