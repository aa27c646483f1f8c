"""Every gin file under gin/ parses; model files have the published shapes; run files build a run."""

import pathlib
import re

import gin
import pytest

import data_files
from gtr_jax.cli import main as cli
from gtr_jax.model import dual_encoder
from gtr_jax.data.sources import multireqa
from gtr_jax.train import trainer
from gtr_jax.data.sources.demo import DEMO_VOCABULARY

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


EVERY_GIN_FILE = sorted(GIN_DIR.rglob("*.gin"))
# Every macro some gin file declares `%gin.REQUIRED`, bound the way a user would.
REQUIRED_MACROS = sorted({
    match.group(1) for path in EVERY_GIN_FILE
    for match in re.finditer(r"^(\w+) = %gin.REQUIRED", path.read_text(), re.MULTILINE)
})


@pytest.mark.parametrize("gin_file", EVERY_GIN_FILE, ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_every_gin_file_parses(gin_file):
    gin.clear_config()
    try:
        cli.parse_gin([str(gin_file)], [f"{name} = 'set'" for name in REQUIRED_MACROS], [])
    finally:
        gin.clear_config()


def test_required_macros_are_reported():
    gin.clear_config()
    try:
        with pytest.raises(cli.UserError, match="MODEL_DIR.*gin.REQUIRED"):
            cli.parse_gin([str(GIN_DIR / "runs" / "finetune.gin")], [], [])
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """Small MS MARCO and MultiReQA/MRQA directories in the official layouts."""
    root = tmp_path_factory.mktemp("data")
    data_files.write_msmarco(str(root / "msmarco"))
    for name in multireqa.TRAIN:
        data_files.write_multireqa(str(root / "multireqa"), str(root / "mrqa"), name)
    return root


TINY = ["models/t5_1_1_tiny.gin", "architectures/ade_spl.gin"]
RUNS = {
    "demo_cpu": (["runs/demo_cpu.gin"], []),
    "finetune": (["runs/finetune.gin", *TINY], ["MIXTURE_OR_TASK_NAME = 'msmarco_train_pairs'"]),
    "msmarco+samtone_both": (["runs/msmarco.gin", *TINY, "losses/samtone_both.gin"], ["INIT_CHECKPOINT = '/none'"]),
    "msmarco+pair": (["runs/msmarco.gin", *TINY, "losses/pair.gin"], ["INIT_CHECKPOINT = '/none'"]),
    "msmarco+xxl+tpu": (["runs/msmarco.gin", "models/t5_1_1_xxl.gin", "architectures/sde.gin", "runs/tpu.gin"],
                        ["INIT_CHECKPOINT = '/none'"]),
    "multireqa": (["runs/multireqa.gin", *TINY, "losses/in_batch.gin"], ["INIT_CHECKPOINT = '/none'"]),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_run_files_build_everything_in_a_dry_run(run, data_dirs, tmp_path, capsys):
    files, bindings = RUNS[run]
    bindings = [
        *bindings, f"MODEL_DIR = '{tmp_path / 'model'}'", f"MSMARCO_DIR = '{data_dirs / 'msmarco'}'",
        f"MULTIREQA_DIR = '{data_dirs / 'multireqa'}'", f"MRQA_DIR = '{data_dirs / 'mrqa'}'",
        f"VOCABULARY = '{DEMO_VOCABULARY}'", "BATCH_SIZE = 8", "train.dry_run = True",
    ]
    gin.clear_config()
    try:
        cli.parse_gin(files, bindings, [])
        assert trainer.train() is None
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    assert "dry run:" in out and "query_tokens (8," in out and "loss" in out
    assert not (tmp_path / "model").exists()  # a dry run writes nothing
