# Two commands, each doing its own set-up:
#   make run   - create/update .venv, run every notebook with papermill (cpu profile), update README results
#   make test  - create/update .venv, then pytest: unit tests + nbmake over notebooks/ (ci profile)
# The virtual environment is (re)installed only when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= cpu

.PHONY: run test install clean-runs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m vadr1_lib run-notebooks --profile $(PROFILE)
	$(PY) -m vadr1_lib report --profile $(PROFILE) --write-readme

test: $(STAMP)
	VADR1_PROFILE=ci VADR1_UNATTENDED=1 $(PY) -m pytest tests notebooks --nbmake --nbmake-timeout=900 -q

clean-runs:
	rm -rf runs/ci runs/cpu
