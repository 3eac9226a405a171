# The two set-up commands of the README: `make demo` and `make test`.
# Both create (or refresh, when setup.cfg, setup.py or the C source changes) the virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch and torchvision are pinned to builds that work together on CPU; see README "Install".
TORCH := torch==2.14.1 torchvision==0.29.1

$(STAMP): setup.cfg setup.py pyproject.toml imgcurate/io/_fastio.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

.PHONY: demo test venv
venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/imgcurate demo sample-output

test: $(STAMP)
	@# the report's browser test needs Chromium; installed here only when running as root
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "chromium not installed: the browser test will skip"
	$(BIN)/python -m pytest
