"""`LossConfig`: the options of `contrastive_loss`, checked when the config is built.

gin builds it where a run file says `train.loss = @LossConfig()`, before any parameter is
initialized, so a bad option is one line naming it rather than a traceback at the first trace.
"""

import dataclasses
import numbers

import gin
import numpy as np

from gtr_jax.errors import UserError

SAME_TOWER_CHOICES = (None, "query", "doc", "both")
REDUCE_CHOICES = ("sum", "mean")

class LossOptionError(UserError, ValueError):
    """A loss option outside its allowed values: a UserError for the CLI, a ValueError for Python callers."""


def check_options(same_tower, bidirectional, bidirectional_reduce, pair_alpha, mask_duplicates):
    """Raise LossOptionError, one line naming the option, its value and the allowed values."""
    if same_tower not in SAME_TOWER_CHOICES:
        raise LossOptionError(f"loss option same_tower={same_tower!r}: allowed are None, 'query', 'doc', 'both'")
    for name, value in (("bidirectional", bidirectional), ("mask_duplicates", mask_duplicates)):
        if not isinstance(value, (bool, np.bool_)):
            raise LossOptionError(f"loss option {name}={value!r}: allowed are True, False")
    if same_tower in ("doc", "both") and not bidirectional:
        raise LossOptionError(f"loss option same_tower={same_tower!r} adds to the p→q loss, which needs "
                              "bidirectional=True; allowed without it are None, 'query'")
    if bidirectional_reduce not in REDUCE_CHOICES:
        raise LossOptionError(f"loss option bidirectional_reduce={bidirectional_reduce!r}: allowed are 'sum', 'mean'")
    alpha_ok = isinstance(pair_alpha, numbers.Real) and not isinstance(pair_alpha, bool) and 0 <= pair_alpha <= 1
    if pair_alpha is not None and not alpha_ok:
        raise LossOptionError(f"loss option pair_alpha={pair_alpha!r}: allowed are None or a number in [0, 1]")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The options of `contrastive_loss`, checked when built (gin: `train.loss = @LossConfig()`)."""

    same_tower: str | None = None
    """SamToNe's same-tower negatives (Moiseev et al. 2023): 'query' adds the other queries to the
    q→p denominator, 'doc' the other docs to the p→q one, 'both' both; None is plain in-batch softmax."""

    bidirectional: bool = False
    """Add the p→q loss (each passage ranks the queries) to the q→p loss, as t5x_retrieval can."""

    bidirectional_reduce: str = "sum"
    """How the two directions combine: 'sum' (t5x_retrieval's scale, so its learning rates carry
    over) or 'mean'."""

    pair_alpha: float | None = None
    """α in [0, 1] of PAIR (Ren et al. 2021): (1 − α)·query-centric + α·passage-centric; None is off."""

    mask_duplicates: bool = True
    """Drop negatives that are the anchor's own item or a known positive of it (the SamToNe paper's
    §6 duplicates), identified by ids or, without ids, by token rows."""

    def __post_init__(self):
        check_options(**self.options())

    def options(self) -> dict:
        """Keyword arguments for `contrastive_loss` / `sharded_contrastive_loss`."""
        return dataclasses.asdict(self)
