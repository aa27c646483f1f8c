"""`jsonl_pairs_task`: a user's JSONL training pairs (gtr_jax/data/sources/jsonl_pairs.py) as task jsonl_<name>.

In gin, after `include 'runs/finetune.gin'`:
  MIXTURE_OR_TASK_NAME = @jsonl_pairs_task()
  jsonl_pairs_task.name = 'mine'
  jsonl_pairs_task.path = '/data/pairs.jsonl'    # or .jsonl.gz, or gs://
  jsonl_pairs_task.num_negatives = 2             # optional; default: the file's own count
The task tokenizes with the run's VOCABULARY (gin's Tokenizer.path), like the other
training tasks.
"""

import re

import gin

from gtr_jax.data import pipeline
from gtr_jax.data.sources import jsonl_pairs
from gtr_jax.errors import UserError


@gin.configurable
def jsonl_pairs_task(name: str, path: str, num_negatives: int | None = None) -> str:
    """Register the JSONL pairs file `path` as training task jsonl_<name>; return the task's name.

    gin calls this wherever a run uses the task name (registering again replaces the task;
    the file is read once per process). The file is read here, not at import: the task's
    number of hard negatives (its feature shapes) comes from it unless num_negatives is given.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[\w.]+", name):
        raise UserError(f"jsonl_pairs_task.name must be letters, digits, '_' or '.', not {name!r}")
    task = "jsonl_" + name
    k = jsonl_pairs.read_pairs(path, num_negatives).num_negatives

    def load():
        pairs = jsonl_pairs.read_pairs(path, num_negatives)
        if pairs.num_negatives != k:
            changed = f"{pairs.num_negatives} negatives per line, not {k}"
            raise UserError(f"{path}: changed since task {task} was registered ({changed})")
        return pairs

    pipeline.register_task(task, "train", load, num_negatives=k)
    return task
