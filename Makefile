# Convenience targets; each is one command from the README.
PY ?= python3

.PHONY: install test test-slow train bench
install:
	$(PY) -m pip install -e '.[test]' -c constraints.txt
test:
	$(PY) -m pytest -q
test-slow:
	$(PY) -m pytest -q -m slow
train:
	$(PY) -m launch.train --config=launch/configs/rule110_small.py --workdir=workdirs/rule110_small
bench:
	$(PY) -m launch.bench kernels --quick
	$(PY) -m launch.bench model --quick
	$(PY) -m launch.bench train --quick
