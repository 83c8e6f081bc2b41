# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   install graphc in .venv and train the digits MLP
#   make test   install system packages and graphc with test extras, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/python -m pip

.PHONY: demo test venv clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(VENV)/bin/python

demo: venv
	$(PIP) install -q ".[examples]"
	$(VENV)/bin/python examples/digits_mlp.py

test: venv
	bash scripts/system-deps.sh
	$(PIP) install -q ".[test]"
	# -P: import the installed package, not the source tree, so packaging is tested too
	$(VENV)/bin/python -P -m pytest -q -rs tests

clean:
	rm -rf $(VENV) build dist *.egg-info
