"""`trainer.train` called from Python with no gin config: every part is passed in.

The reference is the same run built by gin from tests/tiny_train.gin: it must end with
bit-equal parameters, so passing the parts in changes nothing about what is trained.
"""

import json
import os
import pathlib
import re

import gin
import jax
import numpy as np
import pytest

import synthetic_data
from gtr_jax import losses
from gtr_jax.cli import main as cli
from gtr_jax.model import dual_encoder, t5
from gtr_jax.train import checkpoints, optim, partitioning, trainer

TESTS = pathlib.Path(__file__).resolve().parent
STEPS = 6


def parts():
    """tests/tiny_train.gin's model, optimizer, mesh and loss, built in Python."""
    encoder = t5.T5Config(vocab_size=64, d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128,
                          feed_forward="gated-gelu", dropout_rate=0.1)
    return {
        "model_config": dual_encoder.ModelConfig(encoder, tower="sde", embed_dim=32),
        "optimizer": optim.adafactor(total_steps=STEPS, base_learning_rate=1e-2),
        "mesh": partitioning.make_mesh((8, 1), num_devices=8),
        "loss": losses.LossConfig(same_tower="query"),
    }


def python_train(model_dir, **overrides):
    """The tiny run through `trainer.train(...)` with gin cleared."""
    gin.clear_config()
    arguments = dict(model_dir=str(model_dir), train_steps=STEPS, batch_size=16,
                     input_fn=synthetic_data.synthetic_pairs, temperature=0.05, log_every=1, progress=False, **parts())
    return trainer.train(**{**arguments, **overrides})


def gin_train(model_dir):
    """The same run bound by tests/tiny_train.gin."""
    gin.clear_config()
    try:
        cli.parse_gin([str(TESTS / "tiny_train.gin")], [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {STEPS}"],
                      [str(TESTS)])
        return trainer.train()
    finally:
        gin.clear_config()


def logged_losses(model_dir):
    """{step: loss} from metrics.jsonl."""
    rows = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    return {row["step"]: row["loss"] for row in rows}


def test_train_from_python_matches_the_gin_run(tmp_path):
    state = python_train(tmp_path / "python")
    assert gin.config_str() == ""  # nothing was configured behind the caller's back
    assert int(state.step) == STEPS
    assert os.listdir(tmp_path / "python" / "checkpoints") == [f"checkpoint_{STEPS}"]
    losses_by_step = logged_losses(tmp_path / "python")
    assert sorted(losses_by_step) == list(range(1, STEPS + 1))
    assert all(np.isfinite(list(losses_by_step.values())))
    assert losses_by_step[STEPS] < losses_by_step[1], losses_by_step

    gin_train(tmp_path / "gin")
    assert logged_losses(tmp_path / "gin") == losses_by_step
    (from_python, step_a), (from_gin, step_b) = (checkpoints.restore_params(str(tmp_path / name))
                                                 for name in ("python", "gin"))
    assert step_a == step_b == STEPS
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, from_python),
                 jax.tree.map(np.asarray, from_gin))


@pytest.mark.parametrize("name", ["model_config", "optimizer", "mesh", "loss"])
def test_a_part_that_is_not_built_is_one_line_and_writes_nothing(tmp_path, name):
    # gin's `train.loss = @LossConfig` (no call) hands train the class, not an instance.
    wrong = {"model_config": dual_encoder.ModelConfig, "optimizer": optim.adafactor, "mesh": partitioning.make_mesh,
             "loss": losses.LossConfig}[name]
    with pytest.raises(trainer.UserError) as error:
        python_train(tmp_path / "model", **{name: wrong})
    # gin appends "In call to configurable" lines, which the CLI drops; the message is the first line.
    assert re.fullmatch(rf"train\.{name} must be a \w+, not .+ \(in gin: train\.{name} = @\w+\(\)\)",
                        str(error.value).splitlines()[0]), str(error.value)
    assert not (tmp_path / "model").exists()
