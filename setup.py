"""gtr_jax: GTR-style T5 dual-encoder retrievers with the SamToNe loss, in JAX/Flax."""

import shutil

import setuptools
from setuptools.command.build_py import build_py

# Versions seen working together on Python 3.11; pinned so a fresh machine builds the
# same environment CI tests.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "gin-config==0.5.0",
    # etils.epath: how the package reads its input files, local or gs://.
    "etils==1.15.0",
    "sentencepiece==0.2.3",
    "numpy==2.4.6",
    "ml_dtypes==0.6.0",
    "protobuf==7.36.2",
    "seqio==0.0.20",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "clu==0.0.12",
    # clu's TensorBoard writer needs it; tensorflow no longer pulls it in.
    "tensorboard==2.21.0",
    "safetensors==0.8.0",
    "tqdm==4.70.1",
    "absl-py==2.5.1",
    "matplotlib==3.11.2",
    "scikit-learn==1.9.1",
    # BM25, the lexical reference line of `gtr-jax evaluate --ranker=bm25`, and its English stemmer.
    "bm25s==0.3.16",
    "PyStemmer==3.1.0",
    # trec_eval's own C code: the engine of every ranking metric (gtr_jax/eval/metrics.py).
    "pytrec-eval-terrier==0.5.11",
]

TEST_REQUIRES = [
    "pytest==9.2.0",
    # The CPU build of torch 2.13.0 lies on this machine's disk; a range would pull a CUDA build.
    "torch==2.13.0",
    # sentence-transformers 5.7 is the last line that runs with transformers 4.x.
    "transformers==4.57.6",
    "sentence-transformers==5.7.0",
    # tests/test_compile.py compiles for TPU topologies on the CPU host: the libtpu that jax[tpu]==0.10.2 pins.
    "libtpu==0.0.42.1",
]

# Peers the benchmarks under bench/ measure against (not needed by tests).
BENCH_REQUIRES = TEST_REQUIRES + [
    "faiss-cpu==1.15.1",
    # bench/quality_data.py builds its task from these packages' docstrings; pinned (the
    # ones above pull them in unpinned) so that every machine builds the same task.
    "scipy==1.17.1",
    "keras==3.15.1",
    "sympy==1.14.0",
    "networkx==3.6.1",
    "huggingface_hub==0.36.2",
    "pillow==13.0.0",
    "fonttools==4.68.0",
]



class BuildPyWithGinFiles(build_py):
    """Ships the top-level gin/ folder inside the package, as gtr_jax/gin/, in a built wheel or
    a `pip install .`, so an installed gtr-jax finds `--gin_file=runs/finetune.gin` from any
    directory. An editable install reads gin/ where it is."""

    def run(self):
        super().run()
        if not self.editable_mode:
            shutil.copytree("gin", f"{self.build_lib}/gtr_jax/gin", dirs_exist_ok=True)


setuptools.setup(
    name="gtr_jax",
    version="0.1.0",
    description=__doc__,
    packages=setuptools.find_packages(include=["gtr_jax", "gtr_jax.*", "tasks", "tasks.*"]),
    # The demo's SentencePiece model ships inside the package.
    package_data={"gtr_jax.data.sources": ["assets/*.model"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    # `tpu`: libtpu for the pinned jax, what Cloud TPU workers install (tpu_scripts/setup_tpu.sh).
    extras_require={"test": TEST_REQUIRES, "bench": BENCH_REQUIRES, "tpu": ["jax[tpu]==0.10.2"]},
    entry_points={"console_scripts": ["gtr-jax = gtr_jax.cli.main:main"]},
    cmdclass={"build_py": BuildPyWithGinFiles},
)
