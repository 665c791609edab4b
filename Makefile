# pmed: two commands for a researcher (`make repro`, `make test`), a few for developers.
# Every target prints what it does and is safe to run again.

PYTHON   ?= $(shell command -v python3.11 || command -v python3)
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.pmed-installed
CI_WS    := build/ci
CI_PARAMS := tests/params_ci.yaml
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
DEMO_SRC := $(wildcard src/pmed/demo/*.py)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv data repro test unit nbval lint lab lock nbval-refresh clean-ci hooks \
	repro-check privacy-check system-deps browser-check engines-check simulation FORCE

help:
	@echo "make repro   create .venv, make the demo data if data/raw is absent, run dvc repro"
	@echo "make test    Debian test packages if missing + unit tests + nbval on every notebook (small CI data in $(CI_WS)/) + repro-check + browser-check + privacy-check"
	@echo "make lab     JupyterLab with the project's kernel 'Python 3.11 (pmed)'"
	@echo "make lock    re-resolve requirements.in into requirements.lock + environment.yml"
	@echo "make nbval-refresh  store the new outputs of the checked notebook cells"
	@echo "make simulation  the simulation study of the estimators (params simulation:), report in build/simulation/"

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@echo "==> creating/updating $(VENV) from requirements.lock (Python: $(PYTHON))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name pmed --display-name "Python 3.11 (pmed)" >/dev/null
	@touch $(STAMP)
	@echo "==> $(VENV) ready"

data: venv
	@if [ -d data/raw ]; then \
		echo "==> data/raw exists: using it (delete it to regenerate the demo)"; \
		mkdir -p data/raw/truth; \
	else \
		echo "==> data/raw absent: generating the demo data set"; \
		$(BIN)/python -m pmed.demo && $(BIN)/dvc commit --force --quiet data.dvc; \
	fi

repro: data
	@echo "==> dvc repro"
	$(BIN)/dvc repro
	@$(BIN)/dvc status

test: system-deps unit engines-check nbval repro-check browser-check privacy-check

# The cohort stage on PostgreSQL (Debian's server, started by the test as user postgres) and on
# a local Spark (pyspark: the optional extra `spark` of pyproject.toml, installed here).
SPARK_STAMP := $(VENV)/.pmed-spark
$(SPARK_STAMP): pyproject.toml | venv
	@echo "==> installing the optional extra [spark] into $(VENV)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $$($(BIN)/python -c \
		"import tomllib; print(' '.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['spark']))")
	@touch $@

engines-check: venv system-deps $(SPARK_STAMP)
	@echo "==> cohort engines: PostgreSQL and Spark give DuckDB's cohort (slow)"
	$(BIN)/python -m pytest -p no:cacheprovider -m slow -v tests/test_engines.py

# Debian packages some tests need (.ci/apt-packages.txt): installed if missing (as root).
system-deps:
	@bash .ci/system-deps

unit: venv lint
	@echo "==> unit tests"
	$(BIN)/python -m pytest -m "not slow" tests

lint: venv
	@echo "==> ruff"
	$(BIN)/ruff check src tests benchmarks notebooks

# The CI data depend on the demo code and on params.yaml's demo section + common.seed only:
# the stamp file is rewritten (and so newer) only when those values change.
DEMO_STAMP := $(CI_WS)/demo-params.json
$(DEMO_STAMP): FORCE | venv
	@$(BIN)/python -m pmed.nbtools demo-stamp $@

repro-check: venv
	@echo "==> reproduction: the committed HEAD, cloned twice, runs the pipeline at CI size"
	@echo "    (other threads and workers in the 2nd clone): every output and dvc.lock identical"
	$(BIN)/python -m pytest -p no:cacheprovider --basetemp=$(REPRO_CHECK_TMP) -m slow -v tests/test_determinism.py

# The CI-size run that repro-check's first clone built (kept in $(REPRO_CHECK_TMP)/ until the
# next repro-check) opened in headless Chromium: summary + stage reports, links, images, no network.
REPRO_CHECK_TMP := build/repro-check
browser-check: venv
	@echo "==> browser: index.html and every stage report of repro-check's CI-size run in headless Chromium"
	$(BIN)/python -m pytest -p no:cacheprovider -m slow -v tests/test_browser.py

privacy-check: venv
	@echo "==> privacy: identifiers planted in every OMOP free-text column and DICOM patient tag of"
	@echo "    the CI demo never reach an output; a ~20-person cohort publishes no small count"
	$(BIN)/python -m pytest -p no:cacheprovider -m slow -v tests/test_privacy_pipeline.py

$(CI_WS)/data/raw/truth/ground_truth.json: $(DEMO_SRC) $(DEMO_STAMP) | venv
	@echo "==> generating the CI-size demo data in $(CI_WS)/data/raw"
	find $(CI_WS) -mindepth 1 -maxdepth 1 ! -name $(notdir $(DEMO_STAMP)) -exec rm -rf {} +
	$(BIN)/python -m pmed.demo --size ci --out $(CI_WS)/data/raw

nbval: venv $(CI_WS)/data/raw/truth/ground_truth.json
	@echo "==> nbval: executing every notebook on the CI data, comparing the checked cells"
	PMED_WORKSPACE=$(CURDIR)/$(CI_WS) PMED_PARAMS_OVERLAY=$(CI_PARAMS) $(BIN)/python -m pytest -p no:cacheprovider \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
		$(NOTEBOOKS)

nbval-refresh: venv $(CI_WS)/data/raw/truth/ground_truth.json
	@echo "==> re-executing notebooks on the CI data and storing the checked cells' outputs"
	PMED_WORKSPACE=$(CURDIR)/$(CI_WS) PMED_PARAMS_OVERLAY=$(CI_PARAMS) $(BIN)/python -m pmed.nbtools refresh $(NOTEBOOKS)

# Jupyter refuses to run as root unless told to (containers, CI images): add --allow-root then.
lab: venv
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

hooks: venv
	$(BIN)/pre-commit install

lock:
	@echo "==> resolving requirements.in in a scratch venv"
	rm -rf build/lockenv && $(PYTHON) -m venv build/lockenv
	build/lockenv/bin/python -m pip install --quiet -r requirements.in
	build/lockenv/bin/python -m pip freeze --exclude-editable > requirements.lock
	$(BIN)/python -m pmed.lockfile

# The simulation study (issue 13): not part of dvc repro; about 30 min on 2 idle cores.
simulation: venv
	@echo "==> simulation study: params.yaml simulation section -> build/simulation/report.html"
	$(BIN)/python -m pmed.simulation --out build/simulation

clean-ci:
	rm -rf $(CI_WS)
