# Transfer Learning for Computer Vision: the two commands you need
#   make course   set up .venv if needed, execute every notebook (default profile) into build/
#   make test     set up .venv if needed, lint (ruff), run the unit tests and execute every notebook (ci profile)
# More: make lab (JupyterLab), make slides (reveal.js decks in build/slides), make refresh
#       (re-execute and commit-ready notebooks), make status

PYTHON ?= python3
VENV   := .venv# the README's commands create it
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tlcourse-installed
# Everything below runs with the virtual environment first on PATH, so Jupyter kernels use it too.
export PATH := $(abspath $(BIN)):$(PATH)
# Use the dataset mirror next to the checkout when there is one (an instructor's copy, or CI's).
ifneq ($(wildcard ../shared/datasets),)
export TLCOURSE_MIRROR ?= $(abspath ../shared/datasets)
endif
PROFILE ?= default

.PHONY: setup course test unit lab slides site refresh status clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/readme_setup.py scripts/torch_index.py
	@echo "[setup] $$(date -u +%H:%M:%S) installing the course into $(VENV) with the README's commands"
	@# The README's "Without make" install lines, read from it and run as a learner's shell would
	@# (scripts/readme_setup.py); without an NVIDIA GPU they take torch's CPU build when its index is
	@# reachable, and pip's own configuration stays in force (scripts/torch_index.py).
	$(PYTHON) scripts/readme_setup.py --python $(PYTHON)
	@# Bytecode is compiled once, on every core (pip compiles file by file): a machine that sets
	@# PYTHONDONTWRITEBYTECODE never caches it, and each kernel and test process would recompile torch.
	@# (a few files written for newer Pythons do not compile; pip skips them too, hence || true)
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib tlcourse >/dev/null 2>&1 || true
	@touch $(STAMP)
	@echo "[setup] $$(date -u +%H:%M:%S) done"

course: $(STAMP)
	$(BIN)/python -m tlcourse course --profile $(PROFILE)

# The tests run in TEST_WORKERS pytest-xdist processes (a test file or a notebook at a time each),
# with torch and the BLAS libraries on one thread per process. On a small CPU shared with other
# jobs, two threads of one process spend their time waiting for each other (tlcourse.features
# measured 80x slowdowns); single-threaded processes degrade gracefully. A test that runs longer
# than TEST_TIMEOUT seconds fails with a traceback instead of hanging.
TEST_WORKERS ?= 2
TEST_TIMEOUT ?= 1800
test: export OMP_NUM_THREADS := 1
test: export MKL_NUM_THREADS := 1
test: export OPENBLAS_NUM_THREADS := 1
test: $(STAMP)
	@echo "[test] $$(date -u +%H:%M:%S) start: $$(OMP_NUM_THREADS= nproc) CPUs, load $$(cut -d' ' -f1-3 /proc/loadavg)"
	$(BIN)/ruff check tlcourse tests benchmarks scripts notebooks
	TLCOURSE_PROFILE=ci $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --timeout=$(TEST_TIMEOUT) \
		--durations=15 tests

unit: $(STAMP)
	$(BIN)/ruff check tlcourse tests benchmarks scripts notebooks
	$(BIN)/python -m pytest -m "not notebook" tests

# LAB_FLAGS adds JupyterLab options, e.g. make lab LAB_FLAGS="--no-browser --port=8890"
lab: $(STAMP)
	$(BIN)/jupyter lab --ip=127.0.0.1 $(LAB_FLAGS) notebooks/

# Every notebook (with its committed outputs) as a reveal.js deck that works offline
slides: $(STAMP)
	$(BIN)/python -m tlcourse slides

# The course website from the committed, executed notebooks (none is run again), offline:
# build/site/index.html, with every lesson, its slides, the findings, performance and search.
SITE_STAMP := $(VENV)/.tlcourse-site-installed
$(SITE_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[site]'
	@touch $(SITE_STAMP)

site: $(SITE_STAMP)
	$(BIN)/python docs/site.py

refresh: $(STAMP)
	$(BIN)/python -m tlcourse course --profile default --update-notebooks

status: $(STAMP)
	$(BIN)/python -m tlcourse status

clean:
	rm -rf build
