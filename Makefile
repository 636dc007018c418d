# make book: the book, every chapter executed at PRESET (tiny by default; small = CPU edition)
# make test: unit tests, then every chapter under nbval at tiny
PRESET ?= tiny
VENV   := .venv
PY     := $(VENV)/bin/python
export FFATTN_RUNS ?= $(CURDIR)/runs
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
	FFATTN_PRESET=$(PRESET) $(VENV)/bin/jupyter-book build . --path-output _build/$(PRESET) || exit 1; \
	echo "book built at preset $(PRESET) in $$(( $$(date +%s) - start )) s: $(CURDIR)/_build/$(PRESET)/_build/html/index.html"

unit: venv
	$(PY) -m pytest tests -q

chapters: venv
	FFATTN_PRESET=tiny $(PY) -m pytest --nbval-lax book -q -p no:cacheprovider

test: venv
	FFATTN_PRESET=tiny $(PY) -m pytest tests book --nbval-lax -q

clean:
	rm -rf _build runs
