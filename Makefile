# tokencsp developer entry points. Every target is idempotent; stamp files
# inside .venv keep re-runs fast. `make` alone lists the targets.

PYTHON      ?= python3
VENV        := .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.tokencsp-installed
STATE_DIR   := .softhsm
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help deps venv token demo test test-opencryptoki lint bench audit man dist clean

help:
	@echo "tokencsp make targets:"
	@echo "  venv    install system deps (softhsm2, postgresql, python3-venv) and create .venv with '.[test]'"
	@echo "  token   venv + project-local SoftHSM dev token in $(STATE_DIR)/ (label \$${TOKENCSP_TOKEN:-tokencsp-dev})"
	@echo "  demo    token, then run tools/demo.py against it (PIN \$${TOKENCSP_PIN:-1234})"
	@echo "  test    venv, then pytest \$$(PYTEST_ARGS); tests make their own throwaway tokens"
	@echo "  test-opencryptoki  venv, then the token tests (pytest -m 'softhsm and not host_side' \$$(PYTEST_ARGS)) on opencryptoki soft"
	@echo "          tokens: pkcsslotd in private namespaces (opencryptoki/run-in-namespace.sh; root; installs it)"
	@echo "  lint    venv + the 'lint' extra (ruff, mypy), then ruff check and mypy (config in pyproject.toml)"
	@echo "  bench   venv + the 'bench' extra (matplotlib), then tools/bench.py: tokencsp side by side with age, gpg,"
	@echo "          openssl cms, cp and its crypto floors (installs missing peers with apt; writes bench/results/*.json"
	@echo "          and docs/PERFORMANCE.md), and tools/bench_fleet.py; BENCH_QUICK=1 for a short run without the fleet"
	@echo "  audit   venv, then the long checks: padding timing (Welch t) and 8x10000 / 4x2500 imports"
	@echo "  fuzz    venv + atheris, then fuzz blob parsing, envelope opening and three-phase frames:"
	@echo "          FUZZ_RUNS=$(FUZZ_RUNS) inputs per target (3 targets), FUZZ_SECONDS=N caps each target's time"
	@echo "  man     venv, then man/tokencsp.1 regenerated from the parser (checked in; the wheel installs it as"
	@echo "          share/man/man1/tokencsp.1; read it: man -l man/tokencsp.1)"
	@echo "  dist    venv, then python -m build: the sdist and the wheel in dist/"
	@echo "  clean   remove .venv, $(STATE_DIR) and caches"
	@echo "variables: PYTHON=$(PYTHON) (>= 3.11), PYTEST_ARGS='...'"

# Cheap check on every run (softhsm2 can vanish under an existing .venv);
# the full install-deps.sh, which also probes `python -m venv`, runs with the
# venv build below.
deps:
	@{ command -v softhsm2-util && command -v p11tool && command -v groff && command -v zsh; } >/dev/null 2>&1 || \
	  PYTHON=$(PYTHON) softhsm/install-deps.sh
	@postgres/install-deps.sh

$(STAMP): pyproject.toml softhsm/install-deps.sh | deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 || { \
	  v=$$($(PYTHON) -c 'import sys; print("Python", sys.version.split()[0])' 2>/dev/null) || v="not runnable"; \
	  echo "error: tokencsp needs Python >= 3.11, but PYTHON=$(PYTHON) is $$v;" \
	       "run e.g. 'make PYTHON=python3.11 $(MAKECMDGOALS)'" >&2; exit 1; }
	PYTHON=$(PYTHON) softhsm/install-deps.sh
	@# A .venv whose interpreter no longer runs (moved repo, removed Python) is rebuilt.
	@if [ -d $(VENV) ] && ! $(VPY) -c '' >/dev/null 2>&1; then echo "rebuilding broken $(VENV)"; rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: deps $(STAMP)

# The demo's second party (the three-phase exchange) has its own token.
PEER_TOKEN := tokencsp-dev-peer

token: venv
	TOKENCSP_EXTRA_TOKENS="$(PEER_TOKEN)" softhsm/setup-token.sh $(STATE_DIR)

demo: token
	. $(STATE_DIR)/env && TOKENCSP_PIN=$${TOKENCSP_PIN:-1234} TOKENCSP_PEER_TOKEN=$(PEER_TOKEN) \
	  TOKENCSP_REPLAY_DB=$(CURDIR)/$(STATE_DIR)/replay.sqlite3 XDG_STATE_HOME=$(CURDIR)/$(STATE_DIR)/state \
	  $(VPY) tools/demo.py

# pytest exits 5 when it collected no test; make turns every failure into
# exit 2, so name that case here, where the code is still known.
test: venv
	@rc=0; $(VPY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests ran (pytest exit 5)" >&2; fi; \
	exit $$rc

LINT_STAMP := $(VENV)/.tokencsp-lint-installed
$(LINT_STAMP): $(STAMP) pyproject.toml
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[lint]'
	@touch $@

lint: venv $(LINT_STAMP)
	$(VENV)/bin/ruff check tokencsp tests tools
	$(VENV)/bin/mypy

# The token tests (marker softhsm: every test that reaches a token) again on opencryptoki 3.8's
# soft tokens (the plugin's --tokencsp-token=opencryptoki); the pure tests gain nothing from a
# second run, nor do host_side ones (parsing, network framing, PostgreSQL: the token only holds a key).
test-opencryptoki: venv
	@rc=0; opencryptoki/run-in-namespace.sh $(VPY) -m pytest -m "softhsm and not host_side" --tokencsp-token=opencryptoki \
	  $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: no tests ran (pytest exit 5)" >&2; fi; \
	exit $$rc

# BENCH_QUICK=1: small sizes and few rounds, for iterating; the committed figures come from a full run.
BENCH_QUICK ?=
BENCH_STAMP := $(VENV)/.tokencsp-bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[bench]' || echo "no matplotlib: the bench runs without its chart"
	@touch $@

bench: venv $(BENCH_STAMP)
	$(VPY) tools/bench.py $(if $(BENCH_QUICK),--quick)
	$(if $(BENCH_QUICK),,$(VPY) tools/bench_fleet.py)

AUDIT_SAMPLES ?= 10000
audit: venv
	$(VPY) tools/timing_audit.py --samples $(AUDIT_SAMPLES)
	$(VPY) tools/timing_audit.py --samples $(AUDIT_SAMPLES) --oaep
	$(VPY) tools/timing_audit.py --samples $(AUDIT_SAMPLES) --no-deadline
	$(VPY) tools/stress.py

# atheris (libFuzzer for Python) harnesses in tests/fuzz/; seeds in tests/fuzz/corpus/<target>/,
# crashing inputs land in tests/fuzz/crashers/<target>/ (replayed by tests/test_fuzz_properties.py).
FUZZ_RUNS    ?= 350000
FUZZ_SECONDS ?=
.PHONY: fuzz
fuzz: venv
	@$(VPY) -c 'import atheris' 2>/dev/null || $(VENV)/bin/pip install -q --disable-pip-version-check atheris
	FUZZ_RUNS=$(FUZZ_RUNS) FUZZ_SECONDS=$(FUZZ_SECONDS) $(VPY) tests/fuzz/run.py

man: venv
	$(VPY) tools/manpage.py -o man/tokencsp.1
	@echo "man page: man/tokencsp.1 (man -l man/tokencsp.1); commit it with the parser change"

dist: venv
	$(VPY) -m build --outdir dist .

clean:
	rm -rf $(VENV) $(STATE_DIR) .pytest_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
