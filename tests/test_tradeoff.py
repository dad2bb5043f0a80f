"""launch.tradeoff: the trade-off points' costs against sleep_jax.cost, exit files, the table and the figure."""
import json
import os
import shutil

import pytest

from launch import experiment
from launch import tradeoff
from sleep_jax import cost


def _run(tmp_path, name="n4_s0"):
  dst = tmp_path / name
  shutil.copytree(os.path.join(tradeoff.DEMO_RUNS, name), dst)
  return str(dst)


def _exp(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return experiment.experiment_from_config(json.load(f))


def test_served_settings_and_costs_follow_the_cost_model(tmp_path):
  wd = _run(tmp_path)
  # An adaptive evaluation on the predictions, as launch.eval --output=eval_exit_kl.json writes it.
  with open(os.path.join(wd, "eval_halting.json")) as f:
    halting = json.load(f)
  result = dict(next(iter(halting["adaptive"].values())), **{"sleep/passes": 3.5})
  with open(os.path.join(wd, tradeoff.EXIT_FILE.format(measure="kl")), "w") as f:
    json.dump({"max_passes": 8, "fixed": {}, "adaptive": {"0.01": result}}, f)
  settings = tradeoff.served_settings(wd)
  assert {"N=4", "N=1", "N=8", "kl tol=0.01"} <= set(settings)
  assert any(k.startswith("fast_weights tol=") for k in settings)
  assert settings["kl tol=0.01"][0] == {"halt_tol": 0.01, "halt_measure": "kl", "max_passes": 8}

  exp = _exp(wd)
  window = exp.sleep.window
  base = cost.window_flops(exp.model, exp.sleep, window)
  for n in (1, 2, 4, 8):
    changes, res = settings[f"N={n}"]
    wake, sleep, train = tradeoff._costs(wd, changes, res["sleep/passes"])
    assert sleep == pytest.approx(base.sleep(n)) and (sleep == 0) == (n == 1)
    # The wake pass per token does not depend on N: the whole sequence at N = 1 over its length.
    assert wake == pytest.approx((base.wake + cost.window_flops(exp.model, exp.sleep, 1).wake) / 17)
  # A sleep pass that reads predictions also runs the coda and the output projection.
  _, kl_sleep, _ = tradeoff._costs(wd, settings["kl tol=0.01"][0], 3.5)
  assert kl_sleep == pytest.approx(2.5 * (base.core + base.coda + base.unembed) + base.coda)


def test_points_table_and_figure(tmp_path):
  recipes = (tradeoff.Recipe("n4", "fixed N = 4", str(tmp_path), (0, 1)),
             tradeoff.Recipe("transformer", "plain transformer", str(tmp_path), (0,), home="-"),
             tradeoff.Recipe("absent", "no runs", str(tmp_path), (0,)))
  for name in ("n4_s0", "n4_s1", "transformer_s0"):
    _run(tmp_path, name)
  pts = tradeoff.points(recipes)
  n4 = {p.served: p for p in pts if p.recipe == "fixed N = 4"}
  with open(os.path.join(tmp_path, "n4_s1", "eval_halting.json")) as f:
    want = json.load(f)["fixed"]["8"]["accuracy/depth=6"]
  assert n4["N=8"].seeds == (0, 1) and n4["N=8"].accuracy[1] == want and not n4["N=8"].adaptive
  assert n4["N=4"].home and not n4["N=8"].home and all(p.adaptive for k, p in n4.items() if "tol=" in k)
  (tf,) = [p for p in pts if p.recipe == "plain transformer"]
  assert tf.home and tf.sleep_per_window == 0 and tf.served == "-"
  assert not [p for p in pts if p.recipe == "no runs"]
  table = tradeoff.markdown(pts)
  assert len(table.strip().splitlines()) == 2 + len(pts) + 1 and "*majority*" in table
  fig = tradeoff.figure(pts)
  assert len(fig.axes) == 3
  with pytest.raises(ValueError, match="no points"):
    tradeoff.figure([])
