# The two set-up commands of the README: `make demo` (main job on the generated scene world) and
# `make test`. Both create .venv on first use and install torch/torchvision plus vlptm into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlptm-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install browser clean-venv

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[demo,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vlptm demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# The demo's browser test drives Debian's Chromium (playwright comes with the demo extra); as root this
# installs it, otherwise it says how (the test skips, with that reason, when no chromium is found).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium) || \
	    echo "browser: could not install chromium; tests/test_browser.py will skip"; \
	  else echo "browser: run 'sudo apt-get install -y chromium' to run tests/test_browser.py (it skips without)"; fi; }

clean-venv:
	rm -rf $(VENV)
