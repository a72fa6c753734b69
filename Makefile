# Two entry points: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench setup clean lock lock-serve example

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,broker,confluent]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tickcast demo

# The worked example of a Keras model of one's own: train, bundle, backtest, run live (examples/own_model/).
example: $(STAMP)
	$(PY) examples/own_model/train_own_model.py

test: $(STAMP)
	$(PY) -m pytest -q -n 5 --dist worksteal

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 5 --dist worksteal tests/unit tests/property

bench: $(STAMP)
	$(VENV)/bin/tickcast bench operator --json docs/bench-operator.json

# Re-pin the image's runtime dependencies (deploy/requirements.lock) from a clean virtualenv.
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv && .lockvenv/bin/pip install --quiet .
	{ printf '# Pinned runtime dependencies of the tickcast image (deploy/Dockerfile), Python 3.11, linux x86_64.\n'; \
	  printf '# Refresh: make lock   (a clean venv, pip install ., pip freeze; review the diff, then rebuild the image)\n'; \
	  .lockvenv/bin/pip freeze --exclude tickcast; } > deploy/requirements.lock
	rm -rf .lockvenv
	$(MAKE) lock-serve

# The serving image's pins (deploy/requirements-serve.lock, `docker build --target serve`): the runtime
# requirements without TensorFlow and Keras (deploy/serve_requirements.py), installed under the pins of
# deploy/requirements.lock, so both images carry the same versions of what they share.
lock-serve:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	$(PYTHON) deploy/serve_requirements.py > .lockvenv/serve.in
	.lockvenv/bin/pip install --quiet -c deploy/requirements.lock -r .lockvenv/serve.in
	.lockvenv/bin/pip install --quiet --no-deps .
	{ printf '# Pinned runtime dependencies of the serving image (deploy/Dockerfile, --target serve): no TensorFlow, no Keras.\n'; \
	  printf '# Python 3.11, linux x86_64. Refresh: make lock-serve   (a clean venv, the requirements of deploy/serve_requirements.py\n'; \
	  printf '# under the pins of deploy/requirements.lock, pip install --no-deps ., pip freeze; review the diff, rebuild the image)\n'; \
	  .lockvenv/bin/pip freeze --exclude tickcast; } > deploy/requirements-serve.lock
	rm -rf .lockvenv

clean:
	rm -rf .demo .pytest_cache .hypothesis
