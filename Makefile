# make run    install into .venv, build the demo models if needed, serve the web app (MODEL=... optional)
# make test   the same plus test tools and Debian chromium, then every test (browser ones included)
# make bench  every bench/*.py
# make clean  remove the venv and build/test leftovers (data/, with models and journal, stays)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CLI    := $(VENV)/bin/tensor-surgery
MODEL  ?=

# Stamps carry a hash of pyproject.toml, so an edited dependency list reinstalls and nothing else does.
HASH         := $(shell sha256sum pyproject.toml | cut -c1-12)
INSTALL_RUN  := $(VENV)/.installed-run-$(HASH)
INSTALL_TEST := $(VENV)/.installed-test-$(HASH)

TEST_ENV := LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 TS_DEMO_MODELS=$(CURDIR)/data/models

.PHONY: run test bench demo-models chromium clean

run: $(INSTALL_RUN) demo-models
	$(CLI) serve $(MODEL)

test: $(INSTALL_TEST) chromium
	HF_HUB_OFFLINE=1 DATA_DIR=$(CURDIR)/data $(CLI) demo-models
	$(TEST_ENV) $(PY) -m pytest

bench: $(INSTALL_RUN) demo-models
	@set -e; for f in bench/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(PY) $$f; done

demo-models: $(INSTALL_RUN)
	HF_HUB_OFFLINE=1 $(CLI) demo-models

# torch==2.13.0 first: it is the CPU build; an unpinned torch would pull GBs of CUDA packages.
$(INSTALL_RUN):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[live,agent]'
	rm -f $(VENV)/.installed-run-*
	touch $@

$(INSTALL_TEST): $(INSTALL_RUN)
	$(PIP) install -e '.[live,agent,test]'
	rm -f $(VENV)/.installed-test-*
	touch $@

# Debian's chromium for the browser tests (Playwright drives /usr/bin/chromium; it downloads nothing).
chromium:
	@test -x /usr/bin/chromium || { \
	  sudo=; [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || sudo=sudo; \
	  install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium"; \
	  $$install || { $$sudo apt-get update && $$install; }; }

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis test-results bench/out
	find . -name __pycache__ -type d -prune -not -path './data/*' -exec rm -rf {} +
