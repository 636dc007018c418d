# make book: the book, every chapter executed at PRESET (tiny by default; small = CPU edition);
# --all: every page is rebuilt, so numbers never come from an older run of the package
# make edition PRESET=small: the same book, its grid and budget study trained first on NPROC processes
# make test: unit tests, then every chapter under nbval at tiny, at the CI budget below
# OVERRIDES: settings on top of the preset, as JSON (e.g. OVERRIDES='{"distill_epochs": 3}');
# STUDY: the budget study's numbers of training sentences (e.g. STUDY=1000,0; default: the chapter's)
# BATCHES: its other batch sizes and learning-rate factors (e.g. BATCHES=512x2; none: skip; default: the chapter's)
PRESET ?= tiny
OVERRIDES ?=
STUDY ?=
BATCHES ?=
# CI cannot afford the converged tiny budget (make test at it: 77.5 min on 2 cores, 7-8 Dec; benchmarks/README.md): make test
# runs every chapter on a starved budget that exercises the same code, 3000 sentences and at
# most 2 epochs per student, a two-point budget study, and a fine-tune of one epoch on 3000
# sentences. Every table the chapters print says so.
TEST_OVERRIDES := {"distill_sentences": 3000, "distill_epochs": 2, "finetune_sentences": 3000, "finetune_epochs": 1}
TEST_STUDY := 1000,3000
VENV   := .venv
PY     := $(VENV)/bin/python
export FFATTN_RUNS ?= $(CURDIR)/runs
ifdef FFATTN_DATA  # the chapters run in book/: a path relative to here must not break there
export FFATTN_DATA := $(abspath $(FFATTN_DATA))
endif
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: book edition test unit chapters teacher clean venv workshop bundle
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check -e .
	touch $@

teacher: venv
	$(PY) -m ffattn teacher --preset $(PRESET)
	$(PY) -m ffattn evaluate --preset $(PRESET)

book: venv
	@start=$$(date +%s); \
	FFATTN_PRESET=$(PRESET) FFATTN_OVERRIDES='$(OVERRIDES)' FFATTN_STUDY_SENTENCES='$(STUDY)' \
	  FFATTN_STUDY_BATCHES='$(BATCHES)' $(VENV)/bin/jupyter-book build --all . || exit 1; \
	echo "book built at preset $(PRESET) in $$(( $$(date +%s) - start )) s: $(CURDIR)/_build/html/index.html"

# the edition readers see (make edition PRESET=small): its long parts, the grid and chapter 8's
# points, shared out among NPROC processes of THREADS threads each (torchrun: gloo on CPUs, NCCL on
# GPUs), then the book, which reads them from the cache; every part resumes where it stopped
NPROC ?= 2
THREADS ?= 1
ifneq ($(filter edition,$(MAKECMDGOALS)),)  # refused before anything is built
ifneq ($(strip $(OVERRIDES)),)
$(error make edition takes no OVERRIDES (they are for make book): an edition is built at a preset's own settings)
endif
endif
edition: venv
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m ffattn reproduce --preset $(PRESET)
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/torchrun --standalone --nproc_per_node $(NPROC) -m ffattn study --preset $(PRESET) \
	  --sentences '$(STUDY)' --batches '$(BATCHES)'
	$(MAKE) book PRESET=$(PRESET) STUDY='$(STUDY)' BATCHES='$(BATCHES)'

unit: venv
	$(PY) -m pytest tests -q

chapters: venv
	FFATTN_PRESET=tiny FFATTN_OVERRIDES='$(TEST_OVERRIDES)' FFATTN_STUDY_SENTENCES='$(TEST_STUDY)' \
	  $(PY) -m pytest --nbval-lax book -q -p no:cacheprovider

# unit tests; every chapter under nbval at tiny (trains and caches what the chapters need);
# a papermill rerun; then the book build (loads the cache) and a check of the built pages.
test: venv
	$(PY) -m pytest tests -q -p no:cacheprovider
	FFATTN_PRESET=tiny FFATTN_OVERRIDES='$(TEST_OVERRIDES)' FFATTN_STUDY_SENTENCES='$(TEST_STUDY)' \
	  $(PY) -m pytest --nbval-lax book -q -p no:cacheprovider
	$(MAKE) book PRESET=tiny OVERRIDES='$(TEST_OVERRIDES)' STUDY='$(TEST_STUDY)'
	FFATTN_BOOK_HTML=$(CURDIR)/_build/html $(PY) -m pytest tests/test_built_book.py -q -p no:cacheprovider

# the workshop kit: the student edition (exercises without solutions) in workshop/, and a bundle
# of the trained models of PRESET that attendees unpack with `python -m ffattn unbundle FILE`
workshop: venv
	$(PY) -m ffattn workshop --book book --out workshop

bundle: venv
	$(PY) -m ffattn bundle --preset $(PRESET)

clean:
	rm -rf _build runs workshop
