"""demo_train / demo_test: the embedded standard-library docstring task, with the demo vocabulary."""

import functools

from gtr_jax.data import pipeline
from gtr_jax.data.sources import demo
from gtr_jax.data.features import TokenizerVocabulary

_VOCABULARY = TokenizerVocabulary(demo.DEMO_VOCABULARY)
for _split in demo.SPLITS:
    pipeline.register_task(
        f"demo_{_split}",
        _split,
        functools.partial(demo.pairs, _split),
        eval_set=functools.partial(demo.eval_set, _split),
        vocabulary=_VOCABULARY,
    )
