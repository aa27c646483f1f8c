"""`mined_negatives_task`: a pairs task joined with a mined-negatives file (gtr_jax/data/sources/mined_negatives.py).

In gin, after a run file that sets the pairs task (gin/runs/hard_negatives_bm25.gin does this;
gin's singleton registers the task once per run):
  MINED_TASK = @mined_task/singleton()
  mined_task/singleton.constructor = @mined_negatives_task
  batch_iterator.task_or_mixture_name = %MINED_TASK
  task_vocabulary_path.task_or_mixture_name = %MINED_TASK
  mined_negatives_task.pairs_task = 'demo_train'            # any registered task of plain pairs
  mined_negatives_task.path = '/data/negatives.jsonl'        # or .tsv (qidpidtriples), .gz, gs://
  mined_negatives_task.num_negatives = 3                     # k >= 1, the first k of each row
  mined_negatives_task.short_rows = 'error'                  # or 'skip', 'repeat'
The task is `<pairs_task>_mined` (or `name`) and tokenizes with the pairs task's vocabulary.
"""

import re

import gin
import seqio

from gtr_jax.data import pipeline
from gtr_jax.data.sources import mined_negatives
from gtr_jax.errors import UserError


@gin.configurable
def mined_negatives_task(pairs_task: str, path: str, num_negatives: int, short_rows: str = "error",
                         name: str | None = None) -> str:
    """Register `pairs_task` joined with the negatives file `path` as a training task; return its name.

    gin calls this wherever a run uses the task (registering again replaces it). The files
    are read and joined here, so that a bad negatives file stops a run before it writes
    anything; the task serves that join.
    """
    mined_negatives.check_options(num_negatives, short_rows)
    if pairs_task not in pipeline.SOURCES:
        raise UserError(f"mined_negatives_task.pairs_task: unknown task {pairs_task!r} (a mixture cannot be joined)")
    task = name or f"{pairs_task}_mined"
    if not isinstance(task, str) or not re.fullmatch(r"[\w.]+", task) or task == pairs_task:
        raise UserError(f"mined_negatives_task.name must be letters, digits, '_' or '.' and not {pairs_task!r}, "
                        f"not {task!r}")
    base = pipeline.SOURCES[pairs_task]
    vocabulary = seqio.get_mixture_or_task(pairs_task).output_features["query"].vocabulary
    joined = mined_negatives.load(base.pairs, path, num_negatives, short_rows, task)
    pipeline.register_task(
        task,
        base.split,
        lambda: joined,
        num_negatives=num_negatives,
        vocabulary=vocabulary,
    )
    return task
