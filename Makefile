# `make demo` and `make test` set everything up themselves on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-quick lint bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@ldconfig -p | grep -q 'libturbojpeg\.so' || { \
		echo "installing libturbojpeg0 (Debian) ..."; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libturbojpeg0; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,plot,ray]'
	@# DALI (~1 GB with its codecs) only tests a consumer; where its wheel does not install, tests/test_dali.py skips
	$(BIN)/pip install -q -e '.[dali]' || echo "DALI did not install: tests/test_dali.py will skip"
	touch $(STAMP)

demo: setup
	$(BIN)/etl demo

lint: setup
	$(BIN)/ruff check etl tests benchmarks

test: setup lint
	$(BIN)/pytest -q

# the fast unit tests only (seconds, not minutes): for the edit-test loop; `make test` runs everything
test-quick: setup
	$(BIN)/pytest -q -m quick

bench: setup
	$(BIN)/etl bench --generate 3000

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
