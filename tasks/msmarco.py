"""MS MARCO passage tasks; the files are read from gin's MSMARCO_DIR when a dataset is built."""

from gtr_jax.data import pipeline
from gtr_jax.data.sources import msmarco

pipeline.register_task("msmarco_train_pairs", "train", msmarco.train_pairs, eval_set=msmarco.train_eval_set)
pipeline.register_task("msmarco_train_triples", "train", msmarco.train_triples, num_negatives=1)
pipeline.register_task("msmarco_train_qidpidtriples", "train", msmarco.train_qidpidtriples, num_negatives=1)
pipeline.register_task("msmarco_dev", "validation", msmarco.dev_pairs, eval_set=msmarco.dev_eval_set)
