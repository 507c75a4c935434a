PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv bench clean copick-venv slurm-up slurm-down test-slurm ci gpu-check

# torch pinned to the CPU build that this machine image carries (PyPI's default Linux wheel is a CUDA
# build of several GB); the torch backend trains 4x faster than TensorFlow on CPUs (tomochunk/nn/_backend.py)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,torch]' 'torch==2.13.0'
	@touch $(STAMP)

venv: $(STAMP)

# the tests, and every docstring example of the package
test: $(STAMP)
	$(BIN)/python -m pytest tests --doctest-modules tomochunk

# A one-node SLURM with two fake GPUs (root; apt-get only if missing), for tests/test_slurm.py.
slurm-up:
	.ci/slurm-up

slurm-down:
	.ci/slurm-down

# The SLURM integration tests on that node (they skip without it unless TOMOCHUNK_SLURM is set).
test-slurm: $(STAMP)
	SLURM_CONF=$${SLURM_CONF:-/tmp/tomochunk-slurm/slurm.conf} TOMOCHUNK_SLURM=1 $(BIN)/python -m pytest tests/test_slurm.py

# What CI runs: SLURM up, make test with the SLURM tests required, SLURM down whatever happens.
ci:
	.ci/run

# The GPU check of benchmarks/device/ (see its README); --cpu runs it anywhere.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/device/gpu_check.py $(ARGS)

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
