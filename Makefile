# The two set-up commands of the README: `make demo` (main job on the generated scene world) and
# `make test`. Both create .venv on first use and install torch/torchvision plus vlptm into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlptm-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[demo,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlptm demo

test: $(STAMP)
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
