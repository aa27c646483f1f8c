"""BEIR evaluation tasks: `beir_task` registers any BEIR-format directory; the standard ones are
pre-registered as beir_<name> (e.g. beir_scifact, beir_trec_covid) over gin's BEIR_DIR/<name>.
"""

import os

import gin

from gtr_jax.data.sources import beir
from gtr_jax.data import pipeline
from gtr_jax.data.examples import positive_pairs

# The BEIR datasets with public files, and the split each is evaluated on.
STANDARD = {
    "msmarco": "dev", "trec-covid": "test", "nfcorpus": "test", "nq": "test", "hotpotqa": "test", "fiqa": "test",
    "arguana": "test", "webis-touche2020": "test", "quora": "test", "dbpedia-entity": "test", "scidocs": "test",
    "fever": "test", "climate-fever": "test", "scifact": "test",
}


@gin.configurable
def beir_task(name: str, directory: str | None = None, split: str = "test") -> str:
    """Register the BEIR-format `directory` (default BEIR_DIR/<name>) as task beir_<name>; return its name.

    The directory is resolved when the dataset is built, so gin's BEIR_DIR may be set later.
    """
    task = "beir_" + name.replace("-", "_")

    def resolve() -> str:
        return directory or os.path.join(beir.beir_dir(), name)

    pipeline.register_task(
        task,
        split,
        lambda: positive_pairs(beir.eval_set(resolve(), split)),
        eval_set=lambda: beir.eval_set(resolve(), split),
    )
    return task


for _name, _split in STANDARD.items():
    beir_task(_name, split=_split)
