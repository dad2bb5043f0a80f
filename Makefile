# Convenience targets; each is one command from the README.
PY ?= python3

.PHONY: install test test-slow train bench demo demo-controls compat
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
demo:
	$(PY) -m launch.sweep --config=launch/configs/rule110_sleep_demo.py --workdir=workdirs/rule110_demo \
	    --variants=n1,n2,n4 --seeds=0,1,2 --parallel=2
demo-controls:
	$(PY) -m launch.sweep --config=launch/configs/rule110_sleep_demo.py --workdir=workdirs/rule110_demo \
	    --variants=n1_compute4,replay2,deep4,transformer --seeds=0 --parallel=2
# Core tests on a newer jax (Python 3.12 serves jax 0.11.x); see BUILD_NOTES.md, "jax versions".
compat:
	PYENV_VERSION=3.12.1 python3.12 -m venv /tmp/venv312
	/tmp/venv312/bin/pip install "jax==0.11.*" flax optax orbax-checkpoint chex grain absl-py ml-collections \
	    tqdm matplotlib jaxtyping tensorboardX pytest pytest-timeout hypothesis
	/tmp/venv312/bin/pip install --no-deps -e .
	/tmp/venv312/bin/python -m pytest -q tests/test_gated_delta.py tests/test_consolidate.py \
	    tests/test_windowed.py tests/test_session.py
