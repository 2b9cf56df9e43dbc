# The README names two commands: `make run` (the demo) and `make test` (the suite). Both set everything up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup system venv run test bench images clean

setup: system venv

system:
	bash scripts/install-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: setup
	$(VENV)/bin/lockstep demo $(DEMO_ARGS)

test: setup
	bash scripts/start-dockerd.sh
	bash scripts/build-base-image.sh
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Every image, offline, with content-hash tags and the :latest tags docker/compose.yaml uses (docker/README.md).
# `make test` does not need it: tests/test_compose.py builds the same images through the same code.
images: setup
	bash scripts/start-dockerd.sh
	PYTHON=$(PY) bash scripts/build-images.sh

bench: setup
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
