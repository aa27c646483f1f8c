# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo clean

$(VENV)/.installed-test: setup.py
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed: setup.py
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -e .
	touch $@

test: $(VENV)/.installed-test
	$(VENV_PY) -m pytest $(PYTEST_ARGS) tests

# The embedded demo on 8 virtual CPU devices: train a tiny ADE-SPL model on the standard
# library's docstrings, evaluate it on the held-out docstrings next to the same model at
# its random initialization and next to BM25, and export it for sentence-transformers.
# Re-running resumes (a finished run trains no more) and re-exports.
DEMO_DIR ?= demo_out
DEMO_FLAGS ?=
DEMO_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
GTR_JAX := $(DEMO_ENV) $(VENV)/bin/gtr-jax
DEMO_EVAL := --gin_file=eval/retrieval.gin --gin.MIXTURE_OR_TASK_NAME=demo_test
DEMO_SUMMARY := import json, sys; [print("{:<26} P@1 {:.3f}  MRR@10 {:.3f}  NDCG@10 {:.3f}".format(label, r["P_1"], \
  r["mrr_10"], r["ndcg_cut_10"])) for label, path in zip(["demo_test, random init:", "demo_test, trained:", \
  "demo_test, BM25 (bm25s):"], sys.argv[1:]) for r in [json.load(open(path))["results"]["demo_test"]]]

demo: $(VENV)/.installed
	$(GTR_JAX) train --gin_file=runs/demo_cpu.gin --gin.MODEL_DIR=$(DEMO_DIR)/model $(DEMO_FLAGS)
	$(GTR_JAX) train --gin_file=runs/demo_cpu.gin --gin.MODEL_DIR=$(DEMO_DIR)/untrained \
	  $(DEMO_FLAGS) --gin.TRAIN_STEPS=1 --gin.WARMUP_STEPS=0 --gin.LEARNING_RATE=0.0 --gin.train.progress=False
	$(GTR_JAX) evaluate $(DEMO_EVAL) --gin.MODEL_DIR=$(DEMO_DIR)/untrained --gin.EVAL_OUTPUT_DIR=$(DEMO_DIR)/eval_untrained
	$(GTR_JAX) evaluate $(DEMO_EVAL) --gin.MODEL_DIR=$(DEMO_DIR)/model --gin.EVAL_OUTPUT_DIR=$(DEMO_DIR)/eval
	$(GTR_JAX) evaluate $(DEMO_EVAL) --ranker=bm25 --gin.EVAL_OUTPUT_DIR=$(DEMO_DIR)/eval_bm25
	$(GTR_JAX) export --model_dir=$(DEMO_DIR)/model --format=sentence-transformers --output=$(DEMO_DIR)/sentence_transformers --overwrite
	@echo
	@$(VENV_PY) -c '$(DEMO_SUMMARY)' $(DEMO_DIR)/eval_untrained/metrics.json $(DEMO_DIR)/eval/metrics.json \
	  $(DEMO_DIR)/eval_bm25/metrics.json
	@echo "model: $(DEMO_DIR)/model (checkpoints, metrics.jsonl, tensorboard/); run file: $(DEMO_DIR)/eval/demo_test.run"
	@echo "sentence-transformers export: $(DEMO_DIR)/sentence_transformers"

clean:
	rm -rf $(VENV) demo_out
