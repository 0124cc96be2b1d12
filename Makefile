# rtmpd: `make run` starts the server with all defaults, `make test` runs the
# whole suite. Both set up what they need on a fresh Debian machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# rtmpd and what it needs to run; STAMP adds the test extras (pytest, mypy...).
RUN_STAMP := $(VENV)/.installed-run
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the end-to-end tests drive (chromium: headless, through Playwright).
SYSTEM_TOOLS := ffmpeg ffprobe rtmpdump chromium
# The pages' browser libraries (web/package.json, pinned by its lock file),
# copied from npm's install into web/vendor/, where the web port serves them.
WEB_STAMP := web/vendor/.installed
VENDOR_FILES := web/node_modules/hls.js/dist/hls.min.mjs \
	web/node_modules/mpegts.js/dist/mpegts.js

.PHONY: run test lint typecheck unit venv web system-deps bench clean fuzz soak

# twistd stops cleanly on Ctrl-C and then ends itself with SIGINT again (as
# interrupted programs do), which make would report as "*** [run] Interrupt".
# The shell waits for it (its trap is a handler, which twistd does not
# inherit: an ignored SIGINT would be) and takes that 130 as the clean stop.
run: $(RUN_STAMP) $(WEB_STAMP)
	$(info $(BIN)/twistd --nodaemon --pidfile= rtmpd $(ARGS))
	@trap : INT; $(BIN)/twistd --nodaemon --pidfile= rtmpd $(ARGS) || [ $$? -eq 130 ]

test: $(STAMP) $(WEB_STAMP) system-deps
	$(BIN)/ruff check rtmpd tests twisted
	$(BIN)/mypy --strict rtmpd
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Coverage-guided fuzzing of one parser (tests/fuzz/fuzz.py lists the
# targets): make fuzz TARGET=flv_ingest SECONDS=600. Niced: it takes a core.
TARGET ?= flv_ingest
SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	mkdir -p tests/fuzz/work/$(TARGET) tests/fuzz/crashes/$(TARGET)
	nice -n 19 $(BIN)/python -m tests.fuzz.fuzz $(TARGET) -max_total_time=$(SECONDS) \
		-print_final_stats=1 -artifact_prefix=tests/fuzz/crashes/$(TARGET)/ \
		tests/fuzz/work/$(TARGET) tests/fuzz/corpus/$(TARGET)

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check rtmpd tests twisted

typecheck: $(STAMP)
	$(BIN)/mypy --strict rtmpd

venv: $(STAMP)

web: $(WEB_STAMP)

# The venv is (re)built when the package metadata changes. rtmpd is an
# editable install (edits under rtmpd/ take effect at once); rtmpd-source.pth
# also puts the source tree on sys.path, where twistd looks for dropins
# (twisted/plugins/rtmpd_plugins.py). setuptools' own editable finder maps
# only packages, which twistd's plugin search does not see.
$(RUN_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV) || { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e .
	echo '$(CURDIR)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/rtmpd-source.pth"
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# npm ci installs exactly the lock file's versions; --ignore-scripts: the
# libraries ship built, nothing of theirs needs to run here.
$(WEB_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "installing nodejs and npm with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	rm -rf web/vendor && mkdir -p web/vendor
	cp $(VENDOR_FILES) web/vendor/
	cp web/node_modules/hls.js/LICENSE web/vendor/hls.js.LICENSE.txt
	cp web/node_modules/mpegts.js/LICENSE web/vendor/mpegts.js.LICENSE.txt
	touch $@

system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing ffmpeg, rtmpdump and chromium with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg rtmpdump chromium; \
	fi
	@# nginx-rtmp: a forward target of the relay tests (tests/e2e/test_relay.py).
	@[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || { echo "installing nginx and libnginx-mod-rtmp with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx libnginx-mod-rtmp; }
	@# Redis and HAProxy: the three-tier topology test (tests/e2e/test_topology.py).
	@command -v redis-server >/dev/null && [ -x /usr/sbin/haproxy ] || { echo "installing redis-server and haproxy with apt-get"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server haproxy; }

# Load tests against rtmpd, nginx-rtmp and Node-Media-Server (not part of
# `make test`; see benchmarks/README.md). Needs gcc, nginx + libnginx-mod-rtmp
# and npm; installs what is missing.
bench: $(STAMP) system-deps
	$(BIN)/pip install --quiet matplotlib
	@command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nginx libnginx-mod-rtmp; }
	sh benchmarks/build.sh
	$(BIN)/python benchmarks/run.py --all

# Soak (issue 16): one publisher, 500 viewers over RTMP/HTTP-FLV/WS-FLV (5 %
# slow or stalled, 1 % replaced a second) and every recorder, for SOAK_MINUTES;
# the server's RSS must stay flat after the warm-up, its log free of tracebacks
# and every recording valid. Not part of `make test` (see benchmarks/README.md).
# Niced: the machine is shared. Output in benchmarks/out/soak-<time>/.
SOAK_MINUTES ?= 60
soak: $(STAMP) system-deps
	$(BIN)/pip install --quiet matplotlib
	sh benchmarks/build.sh
	nice -n 5 $(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) build dist *.egg-info twisted/plugins/dropin.cache web/node_modules web/vendor
