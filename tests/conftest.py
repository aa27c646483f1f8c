"""Test-wide set-up: 8 virtual CPU devices, float32 matmuls, shared fixtures.

XLA reads XLA_FLAGS once, when jax initializes its backends, so the flag must be set
here, before any test module imports jax. Single-device references use a 1-device mesh
or plain arrays; sharded code gets the 8 devices from `fake_devices`.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# transformers (the test-only reference) must not load its TensorFlow or Flax halves:
# Keras 3 breaks the former and jax 0.10 the latter.
os.environ["USE_TF"] = "0"
os.environ["USE_FLAX"] = "0"

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Trainer tests compile the same step program in many runs and subprocesses; a
# session-wide persistent cache compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gtr_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

import hf_models  # noqa: E402


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory):
    """A tiny SentencePiece model with T5's special ids, trained once per session."""
    return hf_models.train_sentencepiece(str(tmp_path_factory.mktemp("vocab") / "spiece.model"))
