"""Contrastive losses for dual encoders, exact over the global batch: in-batch softmax,
SamToNe and PAIR (formulas in `contrastive`), with their options checked in `config`."""

from gtr_jax.losses.config import SAME_TOWER_CHOICES, LossConfig, LossOptionError
from gtr_jax.losses.contrastive import contrastive_loss, sharded_contrastive_loss, temperature_from_log

__all__ = ["SAME_TOWER_CHOICES", "LossConfig", "LossOptionError", "contrastive_loss", "sharded_contrastive_loss",
           "temperature_from_log"]
