"""Every gin file under gin/ parses and builds a model config."""

import pathlib

import gin
import pytest

from gtr_jax import dual_encoder

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"
MODELS = sorted((GIN_DIR / "models").glob("*.gin"))
ARCHITECTURES = sorted((GIN_DIR / "architectures").glob("*.gin"))

# Published shapes (d_model, layers, heads, d_kv, d_ff, feed-forward) of each model file.
EXPECTED = {
    "t5_1_1_small": (512, 8, 6, 64, 1024, "gated-gelu"),
    "t5_1_1_base": (768, 12, 12, 64, 2048, "gated-gelu"),
    "t5_1_1_large": (1024, 24, 16, 64, 2816, "gated-gelu"),
    "t5_1_1_xl": (2048, 24, 32, 64, 5120, "gated-gelu"),
    "t5_1_1_xxl": (4096, 24, 64, 64, 10240, "gated-gelu"),
    "gtr_t5_base": (768, 12, 12, 64, 3072, "relu"),
    "gtr_t5_large": (1024, 24, 16, 64, 4096, "relu"),
    "gtr_t5_xl": (1024, 24, 32, 128, 16384, "relu"),
    "gtr_t5_xxl": (1024, 24, 128, 128, 65536, "relu"),
    "t5_1_1_tiny": (64, 2, 4, 16, 128, "gated-gelu"),
}


def test_every_model_file_is_listed():
    assert {p.stem for p in MODELS} == set(EXPECTED)
    assert {p.stem for p in ARCHITECTURES} == {"sde", "ade", "ade_spl"}


@pytest.mark.parametrize("model_file", MODELS, ids=lambda p: p.stem)
@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda p: p.stem)
def test_model_and_architecture_files_build_a_config(model_file, architecture):
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(model_file), str(architecture)], [])
        config = dual_encoder.ModelConfig()
    finally:
        gin.clear_config()
    encoder = config.encoder
    shape = (encoder.d_model, encoder.num_layers, encoder.num_heads, encoder.d_kv, encoder.d_ff, encoder.feed_forward)
    assert shape == EXPECTED[model_file.stem]
    assert config.tower == architecture.stem
    assert config.embed_dim == 768 and encoder.vocab_size == 32128
