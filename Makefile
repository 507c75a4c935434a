PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv bench clean copick-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# copick pins zarr<3, so it lives in its own venv; tests/test_copick_interop.py uses it (skips without it).
COPICK_VENV := .venv-copick
$(COPICK_VENV)/.installed:
	@test -x $(COPICK_VENV)/bin/python || $(PY) -m venv $(COPICK_VENV) || python3 -m venv $(COPICK_VENV)
	$(COPICK_VENV)/bin/python -m pip install -q --upgrade pip
	$(COPICK_VENV)/bin/python -m pip install -q copick
	@touch $@

copick-venv: $(COPICK_VENV)/.installed

clean:
	rm -rf $(VENV) build *.egg-info demo_out
