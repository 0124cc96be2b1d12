# rtmpd: `make run` starts the server with all defaults, `make test` runs the
# whole suite. Both set up what they need on a fresh Debian machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the end-to-end tests drive.
SYSTEM_TOOLS := ffmpeg ffprobe rtmpdump

.PHONY: run test lint typecheck unit venv system-deps bench clean

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= rtmpd $(ARGS)

test: $(STAMP) system-deps
	$(BIN)/ruff check rtmpd tests twisted
	$(BIN)/mypy --strict rtmpd
	$(BIN)/pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check rtmpd tests twisted

typecheck: $(STAMP)
	$(BIN)/mypy --strict rtmpd

venv: $(STAMP)

# The venv is (re)built when the package metadata changes. The editable
# install uses "compat" mode so the source tree is on sys.path and twistd
# finds the dropin in twisted/plugins/.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing ffmpeg and rtmpdump with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg rtmpdump; \
	fi

# Load tests against rtmpd, nginx-rtmp and Node-Media-Server (not part of
# `make test`; see benchmarks/README.md). Needs gcc, nginx + libnginx-mod-rtmp
# and npm; installs what is missing.
bench: $(STAMP) system-deps
	$(BIN)/pip install --quiet matplotlib
	@command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx libnginx-mod-rtmp; }
	sh benchmarks/build.sh
	$(BIN)/python benchmarks/run.py --all

clean:
	rm -rf $(VENV) build dist *.egg-info twisted/plugins/dropin.cache
