# The README's two commands: `make demo` and `make test`. Both set up everything first.
VENV ?= .venv
LOCARA := $(VENV)/bin/locara
PY := $(VENV)/bin/python
PROMPT ?= Name the capital city of France.

.PHONY: install demo test lint bench cli-docs

install:
	./scripts/install.sh

demo: install
	$(LOCARA) run --temperature 0 "$(PROMPT)"

lint: install
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy --strict src
	$(PY) -m vulture  # dead code; settings in pyproject.toml [tool.vulture]

test: lint
	$(PY) -m pytest -q

bench: install
	$(PY) bench/decode.py

# docs/cli.md from every command's --help (tests/test_cli_reference.py fails when stale).
cli-docs:
	$(PY) -m locara.cli.reference docs/cli.md
