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
# library's docstrings. Re-running resumes (a finished run trains no more).
DEMO_DIR ?= demo_out
DEMO_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu

demo: $(VENV)/.installed
	$(DEMO_ENV) $(VENV)/bin/gtr-jax train --gin_file=runs/demo_cpu.gin --gin.MODEL_DIR=$(DEMO_DIR)/model

clean:
	rm -rf $(VENV) demo_out
