"""The go/no-go check of an accelerator host (``python -m launch.bench gpu``), end to end on CPU.

Without a GPU or TPU backend the check runs nothing and says NO-GO. With
``--interpret`` it runs every check (the kernel against the float64 oracle,
the trainer's step with Pallas against chunked at N = 1 and 4, the timings)
with the kernels interpreted at tiny sizes, and must say GO; with a broken
kernel and a broken model-side Pallas rule it must say NO-GO, naming both.
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from launch.benchmarks import gpu
from sleep_jax import testing
from sleep_jax.ops.gated_delta import api
from sleep_jax.ops.gated_delta import pallas

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="the CPU dry run; an accelerator host runs the check itself")


def _last_line(text: str) -> str:
  return text.strip().splitlines()[-1]


def test_without_accelerator_nothing_runs_and_the_verdict_is_no_go(tmp_path, capsys):
  out = tmp_path / "gpu.json"
  assert gpu.main([f"--out={out}"]) == 1
  text = capsys.readouterr().out
  assert "no GPU or TPU backend found" in text
  assert "T=16384" in text and "T=1000 H=2 Dk=128" in text  # the device plan, printed
  assert _last_line(text).startswith("NO-GO: no GPU or TPU backend found")
  result = json.loads(out.read_text())
  assert result["go"] is False and result["backend"] == "cpu"
  assert "kernel" not in result and "train_step" not in result


def test_interpret_dry_run_is_go(tmp_path, capsys):
  out = tmp_path / "gpu.json"
  assert gpu.main(["--interpret", f"--out={out}"]) == 0
  text = capsys.readouterr().out
  last = _last_line(text)
  assert last.startswith("GO: ") and "interpret-mode dry run on cpu, not a device check" in last
  result = json.loads(out.read_text())
  assert result["go"] is True and result["failed"] == [] and result["summary"] == last
  assert result["mode"] == "interpret" and result["pallas_backend"] == "triton"
  assert result["counts"] == dict(kernel_ok=2, kernel=2, train_step_ok=2, train_step=2)

  # Kernel: every regime and every output has its error, within its bound.
  assert [row["dtype"] for row in result["kernel"]] == ["float32", "bfloat16"]
  for row in result["kernel"]:
    assert row["ok"] and row["failed"] == []
    assert set(row["rel_rms"]) == set(testing.GATED_DELTA_REGIMES)
    for errors in row["rel_rms"].values():
      assert set(errors) == set(testing.GATED_DELTA_OUTPUTS)
      assert all(errors[name] <= row["bound"][name] for name in errors)
  assert result["kernel"][0]["bound"]["dq"] == testing.tolerance("float32_vs_float64").rel_rms
  assert result["kernel"][1]["bound"]["dq"] == testing.tolerance("bfloat16").rel_rms

  # Training step: N = 1 and N = 4, the latter sleeping 4 passes on its consolidation windows.
  steps = {row["n_passes"]: row for row in result["train_step"]}
  assert set(steps) == {1, 4} and all(row["ok"] for row in steps.values())
  assert steps[4]["passes"] == 4 and steps[4]["sleep_windows"] == 2
  for row in steps.values():
    assert row["loss"]["rel_err"] <= row["loss_bound"]
    assert len(row["grad_rel_rms"]) >= 20  # every parameter of the 2-block model
    assert any("mixer" in name for name in row["grad_rel_rms"])  # the GDN block's own parameters
    assert max(row["grad_rel_rms"].values()) <= row["grad_bound"]
  assert result["train_step_pallas_interpret"] is True

  # Speed: timed, fla skipped with the reason.
  [speed] = result["speed"]
  assert speed["ok"] and speed["ms"]["pallas"]["fwd"] > 0 and speed["ms"]["chunked"]["fwd_bwd"] > 0
  assert speed["ms"]["fla"].startswith("skipped: ") and result["fla"] == speed["ms"]["fla"][len("skipped: "):]
  assert speed["rel_rms_vs_pallas"]["chunked"] < 2e-2  # bf16 inputs
  assert set(result["seconds"]) == {"kernel", "train_step", "speed"}


def _product_form_inverse(a, eye):
  """``(I - a)(I + a^2)(I + a^4)...``: the unstable inverse the kernels once used (KERNELS.md)."""
  x, p, n = eye - a, a, 1
  while 2 * n < a.shape[0]:
    p = pallas._mm(p, p)  # pylint: disable=protected-access
    x = x + pallas._mm(x, p)  # pylint: disable=protected-access
    n *= 2
  return x


def test_broken_kernel_and_broken_model_rule_are_no_go(tmp_path, capsys, monkeypatch):
  # Two independent faults, each for its own check: the kernel's (I + A)^{-1}
  # back to the product identity (accurate on random keys, off on repeated and
  # near-parallel ones), and the Pallas rule the model calls writing with 0.99
  # beta (the kernel check calls the kernel directly and does not see it).
  monkeypatch.setattr(pallas, "_inv_unit_lower", _product_form_inverse)
  rule = api._pallas_rule()  # pylint: disable=protected-access

  def weaker_writes(q, k, v, log_alpha, beta, **kwargs):
    return rule(q, k, v, log_alpha, jnp.asarray(0.99, beta.dtype) * beta, **kwargs)

  monkeypatch.setattr(api, "_pallas_rule", lambda: weaker_writes)
  # The float32 kernel case and N = 1 only: each fault needs one check to show it.
  monkeypatch.setattr(gpu, "INTERPRET", dataclasses.replace(gpu.INTERPRET, kernel=gpu.INTERPRET.kernel[:1],
                                                            n_passes=(1,)))
  out = tmp_path / "gpu.json"
  assert gpu.main(["--interpret", "--skip_speed", f"--out={out}"]) == 1
  last = _last_line(capsys.readouterr().out)
  assert last.startswith("NO-GO: ") and "kernel T=20 Dk=16 Dv=16 C=16 float32" in last
  assert "train step N=1" in last
  result = json.loads(out.read_text())
  assert result["go"] is False and result["summary"] == last
  [float32_case] = result["kernel"]
  assert not float32_case["ok"]
  failed_regimes = {line.split()[0] for line in float32_case["failed"]}
  assert failed_regimes & {"two_keys", "near_parallel", "beta1_gate1"}
  assert "random" not in failed_regimes  # random keys hide the fault
  [step] = result["train_step"]
  assert not step["ok"] and any(line.startswith("grad ") for line in step["failed"])
