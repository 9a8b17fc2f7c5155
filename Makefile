# The two commands of the README. Each creates .venv when missing and installs the
# project with its test dependencies into it.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_out

.PHONY: demo test bench-effectiveness bench-throughput clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(VENV)/bin/mempipe demo-data $(DEMO)/data --train 300 --test 100
	$(VENV)/bin/mempipe protect $(DEMO)/data/train $(DEMO)/protected --preset cpu-tiny --partition cluster --num-actors 2
	$(VENV)/bin/mempipe inspect $(DEMO)/protected --original $(DEMO)/data/train --grid $(DEMO)/grid.png

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra --durations=15 tests

bench-effectiveness: $(VENV)/.installed
	$(PY) bench/effectiveness.py

bench-throughput: $(VENV)/.installed
	$(PY) bench/throughput.py --quick

clean:
	rm -rf $(DEMO) .pytest_cache
