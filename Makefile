# Loopsite: `make run` starts the app; `make test` runs the whole suite.
# Both install what they need first (uv, Python packages, npm packages, Redis, bubblewrap, Chromium).

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
REDIS_URL ?= redis://127.0.0.1:6379/0
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1

.PHONY: help install secret-key uv python-deps node-deps redis bubblewrap chromium run test test-sqlite test-postgres bench clean

help:
	@echo "make run    install everything and start web, worker, Redis and (without OPENAI_API_KEY) the stand-in model"
	@echo "make test   install everything and run the whole test suite (SQLite, then PostgreSQL when reachable)"
	@echo "make bench  print the benchmark figures"

uv:
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || { \
	  echo "Installing uv from PyPI"; \
	  $(PYTHON) -m pip install --quiet --user uv 2>/dev/null \
	  || $(PYTHON) -m pip install --quiet --user --break-system-packages uv \
	  || $(PYTHON) -m pip install --quiet uv; }

python-deps: uv
	@$(UV) sync --frozen --quiet
	@echo "Python packages ready in $(VENV)"

node-deps:
	@if [ -f package.json ]; then \
	  command -v npm >/dev/null 2>&1 || { echo "npm is missing: install Node.js 20 (e.g. apt-get install nodejs npm)"; exit 1; }; \
	  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then \
	    echo "Installing npm packages (promptfoo)"; npm ci --omit=optional --no-audit --no-fund --loglevel=error; \
	  fi; \
	fi

redis:
	@if ! $(PY) -c "import redis,sys; redis.Redis.from_url('$(REDIS_URL)', socket_connect_timeout=1).ping()" >/dev/null 2>&1; then \
	  if ! command -v redis-server >/dev/null 2>&1; then \
	    echo "Installing redis-server"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	    || { echo "Could not install redis-server: install it, or set REDIS_URL to a running Redis"; exit 1; }; \
	  fi; \
	  echo "Starting redis-server on 127.0.0.1:6379"; \
	  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null; \
	  sleep 1; \
	fi

# The agent's shell commands run inside bubblewrap (runs/jail.py); without it runs refuse to start.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  echo "Installing bubblewrap (the jail for the agent's shell commands)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	  || echo "Could not install bubblewrap: agent runs will refuse to start until it is installed (or until LOOPSITE_UNCONFINED_SANDBOX=1 lets the agent's commands run unconfined, at your own risk)"; }

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || { echo "Could not install chromium"; exit 1; }; }

install: python-deps node-deps redis bubblewrap

# A random SECRET_KEY kept under var/ (the app refuses the built-in development key with DEBUG off).
secret-key:
	@mkdir -p var
	@[ -s var/secret_key ] || (umask 077 && $(PY) -c "import secrets; print(secrets.token_urlsafe(50))" > var/secret_key && echo "Generated SECRET_KEY in var/secret_key")

run: install secret-key
	@$(PY) manage.py migrate --noinput -v 0
	@$(PY) manage.py load_sample
	@$(PY) manage.py create_demo_users
	@$(PY) manage.py collectstatic --noinput -v 0
	@$(PY) manage.py run_all --host $(HOST) --port $(PORT)

# The SQLite and PostgreSQL passes run side by side (each on its own database, Redis
# queue and ports); each pass's output is printed whole when it ends.
test: install chromium
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres

test-sqlite:
	@mkdir -p var
	@echo "== Test suite on SQLite"
	@env -u DATABASE_URL -u OPENAI_API_KEY $(PY) -m pytest $(PYTEST_ARGS)

test-postgres:
	@if $(PY) -c "import psycopg; psycopg.connect('$(PG_TEST_URL)', connect_timeout=2).close()" >/dev/null 2>&1; then \
	  echo "== Test suite on PostgreSQL ($(PG_TEST_URL))"; \
	  env -u OPENAI_API_KEY DATABASE_URL=$(PG_TEST_URL) $(PY) -m pytest $(PYTEST_ARGS); \
	else \
	  echo "== PostgreSQL not reachable at $(PG_TEST_URL): PostgreSQL run skipped"; \
	fi

bench: install secret-key
	@for script in bench/[!_]*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf var/test.sqlite3 var/static .pytest_cache
