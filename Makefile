# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install from this repository's files when needed. `make test-fast`
# is the edit loop: the unit tests, without processes, PostgreSQL or Opacus training (the
# markers are described in docs/architecture.md "Tests"), spread over the cores by pytest-xdist.

PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install lint clean

$(STAMP): pyproject.toml constraints.txt veracity/he/_residues.c $(wildcard veracity/he/blake2/*)
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev,dicom]'
	# The examples' real recordings (Daphnet, BasicMotions) are data files inside aeon; its
	# own dependencies (numba) cannot share this numpy, and nothing of aeon is imported.
	$(VENV)/bin/python -m pip install -q --no-deps aeon==1.6.0
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/veracity demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# schemathesis's pytest plugin stays unloaded there (0.4 CPU-s in each process): only the
# live-server test uses schemathesis, as a library, and it is marked integration. Temporary
# directories (each test's databases) go to tmpfs where there is one (/dev/shm, Linux):
# SQLite syncs each commit to disk, which the loop spent a third of its wall time waiting
# for, and no test there checks durability across a power cut. pytest keeps the last
# three runs' directories (~100 MB each) there. Python may write its bytecode caches
# (__pycache__, ignored by git) even where the environment says not to
# (PYTHONDONTWRITEBYTECODE=1, as in many containers): each worker otherwise compiles every
# module of veracity and of the tests again, and pytest rewrites every test module's
# asserts again (collection: 13 CPU-s per worker without the caches, 8 with them). Each
# worker computes on one thread (OpenMP, OpenBLAS, MKL: torch, numpy, scipy): the workers
# already fill the cores, and more threads only contend for them. Idle workers take tests
# from busy ones' queues (--dist worksteal) so that both end together.
# /dev/shm must have 1 GiB free (containers often give it 64 MB); else the default TMPDIR.
FAST_TMPDIR := $(shell test -d /dev/shm && test -w /dev/shm && \
  test "$$(df -Pk /dev/shm | awk 'NR==2 {print $$4}')" -ge 1048576 2>/dev/null && echo /dev/shm)

test-fast: $(STAMP)
	$(if $(FAST_TMPDIR),TMPDIR=$(FAST_TMPDIR) )PYTHONDONTWRITEBYTECODE= \
	  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 VERACITY_FAST_EXAMPLES=1 \
	  $(VENV)/bin/python -m pytest -n auto --dist worksteal -p no:schemathesis -m "not integration and not slow and not training" -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
