"""Executes every notebook under notebooks/ top to bottom (nbclient, fresh kernel).

A notebook's claims are assertions in its cells (oracle agreement, streamed ==
batched logits, loss falling), so executing it checks them.
"""
import os
import pathlib

import pytest
from launch_helpers import FAST_COMPILE_XLA_FLAGS

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # One device in the kernel: the notebook is a single-host walk-through. sleep_effect.ipynb's short runs are
  # nearly all compile (four models), so its kernel compiles fast (tests/launch_helpers.py).
  monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE_XLA_FLAGS if path.name == "sleep_effect.ipynb" else "")
  # A shorter training cell than the interactive default (60 steps): the cell still
  # asserts that the loss falls, and the whole notebook runs in ~90 s on 2 cores.
  monkeypatch.setenv("QUICKSTART_STEPS", "30")
  # sleep_effect.ipynb: a few steps per run, to check that it trains, evaluates and draws; the effect itself
  # is measured by the sweeps in RESULTS.md.
  monkeypatch.setenv("SLEEP_EFFECT_STEPS", "4")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  client.execute()  # raises CellExecutionError, naming the failing cell, on any error
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]
  assert not errors
