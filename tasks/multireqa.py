"""MultiReQA tasks: multireqa_<name>_train (5), multireqa_<name>_eval (8) and the training mixture.

Files are read from gin's MULTIREQA_DIR and MRQA_DIR when a dataset is built. The
mixture's rates are the tasks' sizes (training pairs), counted when it is first used;
`batch_iterator(..., single_task_batches=True)` draws each batch from one task.
"""

import functools

import seqio

from gtr_jax.data import pipeline
from gtr_jax.data.sources import multireqa
from gtr_jax.data.examples import positive_pairs


def task_name(dataset: str, kind: str) -> str:
    """multireqa_<lowercase dataset>_<train|eval>."""
    return f"multireqa_{dataset.lower()}_{kind}"


for _name in multireqa.TRAIN:
    pipeline.register_task(task_name(_name, "train"), "train", functools.partial(multireqa.train_pairs, _name))
for _name in multireqa.DATASETS:
    pipeline.register_task(
        task_name(_name, "eval"),
        "test",
        lambda name=_name: positive_pairs(multireqa.eval_set(name)),
        eval_set=functools.partial(multireqa.eval_set, _name),
    )

if "multireqa_train_mixture" in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove("multireqa_train_mixture")
seqio.MixtureRegistry.add(
    "multireqa_train_mixture",
    [(task_name(n, "train"), lambda task, n=n: multireqa.num_train_pairs(n)) for n in multireqa.TRAIN],
)
