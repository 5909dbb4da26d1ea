# Two commands set up and run everything on a fresh machine (see README.md):
#   make test   creates .venv when missing, then lint + the whole test suite
#   make demo   creates .venv when missing, then runs the main job on the embedded default
# The environment is (re)built only when a requirements file or setup.py changes (stamp file).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.stamp-$(shell cat requirements/*.txt setup.py | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv test lint pytest demo bench clean

venv: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/constraints-cpu.txt setup.py
	@echo "== building $(VENV) (torch 2.13.0 CPU, OpenRLHF 0.11.2 --no-deps + its pure-Python requirements)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@start=$$(date +%s); \
	DS_BUILD_OPS=0 $(PIP) install -q -c requirements/constraints-cpu.txt -r requirements/cpu.txt 2>&1 | grep -v "is ignored" ; \
	$(PIP) install -q --no-deps openrlhf==0.11.2 && \
	$(PIP) install -q --no-deps -e . && \
	rm -f $(VENV)/.stamp-* && touch $@ && \
	echo "== $(VENV) ready in $$(( $$(date +%s) - start )) s"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest

demo: venv
	$(PY) -m openrlhf_tapo.cli.demo

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
