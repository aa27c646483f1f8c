"""The command line's plumbing: gin flags and gin's errors (gtr_jax.cli.gin_flags), quiet start-up
(gtr_jax.cli.startup), and a whole `gtr-jax` process printing its own output only."""

import os
import subprocess
import sys

import gin
import pytest

from gtr_jax.cli import gin_flags, startup
from gtr_jax.errors import UserError

CHATTER = ("oneDNN", "cuda", "cuDNN", "TF-TRT", "absl")


@pytest.mark.parametrize("flag, binding", [
    ("--gin.MODEL_DIR=/tmp/run", "MODEL_DIR = '/tmp/run'"),
    ("--gin.BEIR_DIR=/data/beir", "BEIR_DIR = '/data/beir'"),
    ("--gin.MODEL_DIR=None", "MODEL_DIR = None"),
    ("--gin.MODEL_DIR=%OTHER_DIR", "MODEL_DIR = %OTHER_DIR"),
    ("--gin.MIXTURE_OR_TASK_NAME='a,b'", "MIXTURE_OR_TASK_NAME = 'a,b'"),
    ("--gin.TRAIN_STEPS=100", "TRAIN_STEPS = 100"),
    ("--gin.train.progress=False", "train.progress = False"),
])
def test_gin_flags_become_bindings(flag, binding):
    assert gin_flags.split_gin_flags(["train", flag, "--gin_file=x.gin"]) == (["train", "--gin_file=x.gin"], [binding])


@gin.configurable
def _configured(*, size=gin.REQUIRED, fail=False):
    if fail:
        raise RuntimeError("not a gin problem")
    return size


def test_run_configured_reports_an_unset_required_argument_in_one_line():
    gin.clear_config()
    try:
        with pytest.raises(UserError) as error:
            gin_flags.run_configured(_configured)
        assert str(error.value) == "gin: Required bindings for `_configured` not provided in config: ['size']"
        gin.parse_config(["_configured.size = 3"])
        assert gin_flags.run_configured(_configured) == 3
        with pytest.raises(RuntimeError, match="not a gin problem"):
            gin_flags.run_configured(_configured, fail=True)
    finally:
        gin.clear_config()


LOG_LINES = {
    "I": "I0000 00:00:1796357865.787165   29432 port.cc:153] oneDNN custom operations are on.\n",
    "W": "W0000 00:00:1796357867.551441   29432 py_utils.cc:38] TF-TRT Warning: Could not find TensorRT\n",
    "E": "E0000 00:00:1796357867.551441   29432 cuda_dnn.cc:8579] Unable to register cuDNN factory\n",
    "notice": "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
}


@pytest.mark.parametrize("level, kept", [("3", []), ("2", ["E"]), ("1", ["notice", "W", "E"]),
                                         ("0", ["notice", "I", "W", "E"])])
def test_native_log_lines_below_the_level_are_dropped(monkeypatch, capfd, level, kept):
    monkeypatch.setenv(startup.LEVEL_VARIABLE, level)
    order = ["notice", "I", "W", "E"]
    with startup.native_logs_filtered():
        for name in order:
            os.write(2, LOG_LINES[name].encode())
        os.write(2, b"a line of our own\n")
    expected = "".join(LOG_LINES[name] for name in order if name in kept)
    assert capfd.readouterr().err == expected + "a line of our own\n"


def test_a_gtr_jax_process_prints_no_start_up_chatter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (startup.LEVEL_VARIABLE, "TF_ENABLE_ONEDNN_OPTS")}
    process = subprocess.run(
        [sys.executable, "-m", "gtr_jax", "evaluate", "--ranker=bm25", "--gin_file=eval/retrieval.gin",
         "--gin.MIXTURE_OR_TASK_NAME=demo_test", f"--gin.EVAL_OUTPUT_DIR={tmp_path}",
         "--gin.evaluate_bm25.progress=False", "--gin.evaluate_bm25.max_queries=20"],
        env=env, capture_output=True, text=True, check=False)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("demo_test (bm25, 20 queries")
    chatter = [line for line in process.stderr.splitlines() if any(word in line for word in CHATTER)]
    assert chatter == [], process.stderr
