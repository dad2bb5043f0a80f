"""The packaging check: build the wheel, install it into a clean venv, import from it, run the notebook on it.

Slow (a clean install of the whole stack, then the notebook): run with ``pytest -m slow tests/test_wheel.py``.
The script it runs, ``.ci/wheel_check``, asserts each stage itself (files in the wheel, ``pip check``, imports
resolving inside the venv, every notebook cell without error).
"""
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_wheel_installs_into_a_clean_venv_and_runs_the_notebook(tmp_path):
  env = dict(os.environ, QUICKSTART_STEPS="10")
  env.pop("PYTHONPATH", None)
  p = subprocess.run(["bash", os.path.join(REPO, ".ci", "wheel_check"), str(tmp_path / "venv")], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=3500)
  assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
  assert "wheel check passed" in p.stdout and "notebook ran top to bottom" in p.stdout
