# Two commands do all the set-up on a fresh Debian machine with Python 3.11:
#   make up    run the node on its embedded default (private Redis, one worker, the SCP)
#   make test  lint, type-check and run the tests (real Redis, Celery, dcmtk, dciodvfy)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Without imported weights, `make up` and `make demo` serve seeded untrained weights,
# labelled as such in every SR and log line. DICOM_NODE_ALLOW_DEMO_WEIGHTS=0 refuses them.
DEMO_WEIGHTS := DICOM_NODE_ALLOW_DEMO_WEIGHTS=$${DICOM_NODE_ALLOW_DEMO_WEIGHTS:-1}

.PHONY: up test demo bench lint typecheck imports venv sysdeps jsdeps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The chest model's fidelity test runs torchxrayvision's own preprocessing. Its
	# dependencies (torchvision among them) would replace our torch wheel, so it is
	# installed alone; the test stubs its torchvision import.
	$(BIN)/pip install -q --no-deps torchxrayvision==1.5.7
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# System tools the tests run: dcmtk, dicom3tools (dciodvfy), Orthanc with its DICOMweb
# plugin (the tests start their own instance; the Debian service is not used), node + npm
# (dcmjs, OHIF's DICOM parser). Each is installed only when missing.
ORTHANC_DICOMWEB := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
sysdeps:
	@if ! command -v storescu >/dev/null || ! command -v dciodvfy >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk dicom3tools >/dev/null; \
	fi
	@if ! { command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ]; } || [ ! -e $(ORTHANC_DICOMWEB) ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; \
	fi
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; \
	fi

# dcmjs for tests/js/ohif_check.mjs, exactly as tests/js/package-lock.json pins it.
JS_STAMP := tests/js/node_modules/.installed
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json | sysdeps
	cd tests/js && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

jsdeps: $(JS_STAMP)

up: venv
	$(DEMO_WEIGHTS) $(BIN)/dicom-node up

demo: venv
	$(DEMO_WEIGHTS) $(BIN)/dicom-node demo

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

test: venv sysdeps jsdeps lint typecheck imports
	$(BIN)/pytest -n 2

bench: venv sysdeps
	$(BIN)/python bench/e2e
	$(BIN)/python bench/ingest
	$(BIN)/python bench/inference
	$(BIN)/python bench/reports

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
