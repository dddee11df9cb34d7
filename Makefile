# `make demo` and `make test` install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
# `make image VARIANT=cuda` builds the CUDA image (see Dockerfile).
VARIANT ?= cpu
IMAGE_NAME ?= bidsrecon/bidsrecon

.PHONY: install demo test lint chromium image clean

install: $(STAMP)

# Re-runs only when the pins or the package metadata change.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml version
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bidsrecon.demo $(DEMO_DIR)

# ruff on the Python (pyflakes, import order, complexity; settings in pyproject.toml), then the
# container and CI files, checked without Docker: hadolint on the Dockerfile, the CircleCI
# config against its JSON schema, then its workflow/job/executor names against each other.
lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.circle-ci .circleci/config.yml
	$(BIN)/python tools/check_circleci_workflows.py .circleci/config.yml

# Some tests open HTML reports in headless Chromium: Debian's `chromium` package, installed
# here when missing (as root, or through sudo).
chromium:
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: chromium is not installed and there is no apt-get to install it;" \
			"install Chromium so that \`chromium\` is on PATH, then run make again" >&2; \
		exit 1; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	else \
		echo "make: chromium is not installed, and installing it needs root: run" \
			"'apt-get update && apt-get install -y --no-install-recommends chromium' as root" \
			"(or install sudo), then run make again" >&2; \
		exit 1; \
	fi; \
	echo "make: installing Debian's chromium (needed by the test suite)"; \
	$$sudo apt-get update && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

# One test file per worker (module fixtures are built once), as many workers as cores, at most 4;
# the slowest tests are listed at the end.
test: $(STAMP) lint chromium
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile --durations=15

# Needs Docker; the version label and tag come from the `version` file.
image:
	docker build --build-arg VARIANT=$(VARIANT) --build-arg VERSION="$$(cat version)" \
		-t $(IMAGE_NAME):"$$(cat version)"$(if $(filter cuda,$(VARIANT)),-cuda) .

clean:
	rm -rf $(VENV) $(DEMO_DIR)
