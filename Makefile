# preview-bot: `make run` sets up and starts the bot; `make test` sets up and runs every check.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Two workers, a file each at a time: each starts its own rig once (API server, GitHub fake),
# and a file's tests share them. PARALLEL= runs everything in one process.
PARALLEL ?= -n 2 --dist loadfile

.PHONY: setup test lint typecheck unit run bench lock settings-docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy --strict bot tests

# Pinned GitHub artifacts (webhook examples, schemas, OpenAPI) are fetched into .cache/ here.
test: lint typecheck
	$(PY) -m tests.rig.artifacts
	$(PY) -m tests.deploy.tools
	$(VENV)/bin/pytest $(PARALLEL) $(PYTEST_ARGS)

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

run: setup
	$(VENV)/bin/preview-bot serve --local .preview-bot-local

# Figures, not tests: the machine's load shows in them (medians over rounds). intake.py needs
# wrk (apt-get install -y wrk); scale.py and request_counts.py start the rig (envtest, the GitHub fake).
bench: setup
	$(PY) -m tests.rig.artifacts
	$(PY) bench/intake.py
	$(PY) bench/intake.py --production
	$(PY) bench/request_counts.py
	$(PY) bench/scale.py
	$(PY) bench/github.py
	$(PY) bench/decode.py
	$(PY) bench/log_line.py
	$(PY) bench/imports.py
	$(PY) bench/serve_memory.py

# Regenerate requirements.lock (the image's pins) and the settings table/schema from bot.config.
lock: setup
	$(PY) -m tests.deploy.tools lock

settings-docs: setup
	$(PY) -m tests.deploy.tools settings

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache *.egg-info
