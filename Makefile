# make book: the book, every chapter executed at PRESET (tiny by default; small = CPU edition);
# --all: every page is rebuilt, so numbers never come from an older run of the package
# make test: unit tests, then every chapter under nbval at tiny
PRESET ?= tiny
VENV   := .venv
PY     := $(VENV)/bin/python
export FFATTN_RUNS ?= $(CURDIR)/runs
ifdef FFATTN_DATA  # the chapters run in book/: a path relative to here must not break there
export FFATTN_DATA := $(abspath $(FFATTN_DATA))
endif
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: book test unit chapters teacher clean venv
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
	FFATTN_PRESET=$(PRESET) $(VENV)/bin/jupyter-book build --all . || exit 1; \
	echo "book built at preset $(PRESET) in $$(( $$(date +%s) - start )) s: $(CURDIR)/_build/html/index.html"

unit: venv
	$(PY) -m pytest tests -q

chapters: venv
	FFATTN_PRESET=tiny $(PY) -m pytest --nbval-lax book -q -p no:cacheprovider

# unit tests; every chapter under nbval at tiny (trains and caches what the chapters need);
# a papermill rerun; then the book build (loads the cache) and a check of the built pages.
test: venv
	$(PY) -m pytest tests -q -p no:cacheprovider
	FFATTN_PRESET=tiny $(PY) -m pytest --nbval-lax book -q -p no:cacheprovider
	$(MAKE) book PRESET=tiny
	FFATTN_BOOK_HTML=$(CURDIR)/_build/html $(PY) -m pytest tests/test_built_book.py -q -p no:cacheprovider

clean:
	rm -rf _build runs
