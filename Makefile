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

# the demo: a tiny public CLIP stand-in (pretrained in seconds, cached in $(DEMO_CACHE)), demo shards,
# protection against the stand-in with the default preset, then the check a user runs on their own
# data: the stand-in fine-tuned on the clean, the random-noise and the protected copies
DEMO_CACHE ?= .cache/demo-model
demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(VENV)/bin/mempipe demo-model $(DEMO_CACHE)
	$(VENV)/bin/mempipe demo-data $(DEMO)/data --train 1000 --test 200 --size 16 --seed 5
	$(VENV)/bin/mempipe protect $(DEMO)/data/train $(DEMO)/protected --surrogate local-dir:$(DEMO_CACHE)/model
	$(VENV)/bin/mempipe eval --train $(DEMO)/protected --compare $(DEMO)/data/train --test $(DEMO)/data/test \
		--init local-dir:$(DEMO_CACHE)/model --lr 1e-3 --out $(DEMO)/effect
	$(VENV)/bin/mempipe inspect $(DEMO)/protected --original $(DEMO)/data/train --grid $(DEMO)/grid.png \
		--effect $(DEMO)/effect/compare.json > /dev/null
	@echo "grid and gains: $(DEMO)/grid.png"

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra --durations=15   # testpaths: tests, then bench/tests

bench-effectiveness: $(VENV)/.installed
	$(PY) bench/effectiveness.py

bench-throughput: $(VENV)/.installed
	$(PY) bench/throughput.py --quick

clean:
	rm -rf $(DEMO) .pytest_cache .cache/demo-model
