"""Slow: every shipped small config learns its shallow depths in its default budget.

Each config is trained exactly as the README's main job runs it (``launch.train``
with the file's defaults, N = 1), then its final evaluation is checked: the
shallowest depth bucket reaches accuracy >= 0.9 and at least one deeper bucket
sits clearly above its majority baseline (by more than three standard errors).
A one-step smoke test shows a config runs; this shows it learns.

Run with ``pytest -m slow tests/test_presets_learn.py`` (minutes per config on
2 CPU cores; RESULTS.md and BENCHMARKS.md hold the measured tables).
"""
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _depths(result, key):
  out = {}
  for k, v in result.items():
    if k.startswith(f"{key}/depth="):
      out[int(k.split("=")[1])] = float(v)
  return out


def check_learned(result: dict) -> list[str]:
  """Reasons the result fails the learning criterion (empty: it passes)."""
  acc, maj, cnt = _depths(result, "accuracy"), _depths(result, "majority"), _depths(result, "count")
  if not acc:
    return ["no per-depth accuracy in the result"]
  reasons = []
  shallow = min(acc)
  if acc[shallow] < 0.9:
    reasons.append(f"shallowest depth {shallow}: accuracy {acc[shallow]:.3f} < 0.9")
  above = []
  for d in sorted(acc):
    if d == shallow or d not in maj or d not in cnt:
      continue
    se = math.sqrt(max(acc[d] * (1 - acc[d]), 1e-12) / max(cnt[d], 1.0))
    if acc[d] - maj[d] > 3 * se:
      above.append(d)
  if not above:
    reasons.append(f"no deeper bucket above its majority baseline: accuracy {acc}, majority {maj}")
  return reasons


# Per config, the floors the issue sets on named depths, beside the generic criterion above.
FLOORS = {"depo_small": {1: 0.9, 2: 0.5}, "gsm_math_small": {1: 0.9}}


def check_floors(name: str, result: dict) -> list[str]:
  """Reasons the result misses a config's floors (empty: it meets them)."""
  acc = _depths(result, "accuracy")
  return [f"{name} depth {d}: accuracy {acc.get(d, float('nan')):.3f} < {floor}"
          for d, floor in FLOORS.get(name, {}).items() if not acc.get(d, 0.0) >= floor]


def test_check_floors():
  assert check_floors("depo_small", {"accuracy/depth=1": 0.95, "accuracy/depth=2": 0.5}) == []
  assert len(check_floors("depo_small", {"accuracy/depth=1": 0.95, "accuracy/depth=2": 0.49})) == 1
  assert len(check_floors("depo_small", {"accuracy/depth=1": 0.95})) == 1  # a missing depth fails
  assert check_floors("rule110_small", {}) == []


def test_check_learned_criterion():
  good = {"accuracy/depth=1": 0.95, "accuracy/depth=4": 0.8, "majority/depth=4": 0.55, "count/depth=4": 500,
          "majority/depth=1": 0.5, "count/depth=1": 500}
  assert check_learned(good) == []
  shallow_bad = dict(good, **{"accuracy/depth=1": 0.85})
  assert any("shallowest" in r for r in check_learned(shallow_bad))
  at_majority = dict(good, **{"accuracy/depth=4": 0.56})
  assert any("majority" in r for r in check_learned(at_majority))


@pytest.mark.slow
# Seed 0, the configs' default. gsm_math_small meets its floor on seeds 0 and 2 but not 1 (RESULTS.md, S8).
@pytest.mark.parametrize("name", ["rule110_small", "depo_small", "gsm_math_small"])
def test_small_config_learns_in_its_default_budget(name, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-m", "launch.train", f"--config=launch/configs/{name}.py",
                         f"--workdir={tmp_path / name}", "--config.train.progress=False"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / name / "eval.json") as f:
    result = json.load(f)
  print(proc.stdout[-2000:])
  assert check_learned(result) + check_floors(name, result) == [], check_learned(result) + check_floors(name, result)
