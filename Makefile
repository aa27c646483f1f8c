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

demo: $(VENV)/.installed
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) demo_out
