# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY := .venv/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-fast lint clean

setup: .venv/.installed $(FMNIST)/.checked

.venv/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,hf]'
	touch $@

# Debian ships real Fashion-MNIST; install it when we can (root) and it is missing.
$(FMNIST)/.checked:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q dataset-fashion-mnist; fi
	@true

demo: setup
	.venv/bin/dcvit demo --out runs/demo

# pytest-randomly (a dev extra) runs the tests in a new random order each time; -p no:randomly keeps file order.
test: setup
	$(PY) -m pytest -q -n 2 tests

# Everything except the tests marked slow (demo, README examples, multi-process runs).
test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow" tests

# ruff, then mypy on the public API (the package faces; settings and scope in pyproject.toml, [tool.mypy]).
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
