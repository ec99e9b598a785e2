# The two commands of the README: `make run` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_BUNDLE ?= bundles/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test install lint prepare bundle clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: on these machines it is a local CPU wheel, and the range in
# pyproject.toml then installs nothing more (a newer torch would pull GBs of CUDA).
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

# Build the demo bundle once (the whole vendored Beauty catalogue, preset quick), then serve it. The build runs in
# cached stages under $(DEMO_BUNDLE).work/: an interrupted build continues where it stopped when make run is
# called again (training/downstream/demo.py). A bundle of an older format (made before an upgrade) is rebuilt.
run: $(VENV)/.installed
	@$(BIN)/python -c "import json, sys, bundle; \
	  sys.exit(json.load(open('$(DEMO_BUNDLE)/manifest.json')).get('format_version') != bundle.FORMAT_VERSION)" \
	  2>/dev/null || $(BIN)/lmindexer build-demo --overwrite --out $(DEMO_BUNDLE)
	$(BIN)/lmindexer serve --bundle $(DEMO_BUNDLE)

bundle: $(VENV)/.installed
	$(BIN)/lmindexer build-demo --out $(DEMO_BUNDLE)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The Debian packages and the Redis the tests need, exactly as CI prepares them (.ci/run calls it too).
prepare:
	bash .ci/prepare

test: lint prepare
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
