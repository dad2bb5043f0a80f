"""Plots and sweep tables from synthetic records (no training)."""
import os

import numpy as np
import pytest

from sleep_jax.train import metrics as metrics_lib
from launch import plotting


def _records(n, slope):
  recs = [{"kind": "train", "step": s, "tokens": s * 100, "loss": 1.0 / (1 + slope * s),
           "train/accuracy": min(1.0, slope * s / 10)} for s in range(1, 6)]
  recs += [{"kind": "eval", "step": s, "tokens": s * 100, "accuracy": min(1.0, slope * s / 8),
            "accuracy/depth=2": 0.9, "accuracy/depth=4": 0.1 * n} for s in (2, 4)]
  return recs


def _is_png(path):
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_curves_prefer_eval_records_and_fall_back_to_train():
  xs, ys = plotting.curve(_records(1, 1.0), "accuracy")
  assert xs == [200.0, 400.0] and ys == [0.25, 0.5]
  xs, ys = plotting.curve([r for r in _records(1, 1.0) if r["kind"] == "train"], "accuracy")
  assert len(xs) == 5 and ys[0] == pytest.approx(0.1)
  assert plotting.curve(_records(1, 1.0), "loss")[1][0] == pytest.approx(0.5)


def test_figures_and_sweep_table(tmp_path):
  from launch import plot as plot_cli
  from launch import sweep_results
  runs = {f"N={n}": _records(n, n) for n in (1, 2, 4)}
  p1 = plotting.save(plotting.plot_training_curves(runs, "accuracy"), str(tmp_path / "a.png"))
  results = {f"N={n}": {"accuracy": 0.5, "accuracy/depth=2": 0.9, "accuracy/depth=4": 0.2 * n,
                        "loss/depth=2": 0.1, "loss/depth=4": 1.0 / n} for n in (1, 2, 4)}
  p2 = plotting.save(plotting.plot_vs_depth(results, "accuracy", depth_name="t"), str(tmp_path / "d.png"))
  rows = []
  for n in (1, 2, 4):
    rows += sweep_results.eval_rows(results[f"N={n}"], {"variant": f"n{n}", "n_passes": n, "seed": 0,
                                                        "train_depth": "", "tokens": 500, "steps": 5})
  assert [r["depth"] for r in rows[:3]] == [2, 4, "all"]
  csv_path = sweep_results.write_csv(rows, str(tmp_path / "results.csv"))
  # launch.plot --table reads a sweep's results.csv.
  back = plot_cli.read_table(csv_path)
  assert {k: back[1][k] for k in ("variant", "n_passes", "depth", "accuracy", "loss", "tokens", "steps")} == {
      "variant": "n1", "n_passes": 1, "depth": 4, "accuracy": 0.2, "loss": 1.0, "tokens": 500, "steps": 5}
  assert plot_cli.table_results(back, "accuracy")["N=4"] == {"accuracy/depth=2": 0.9, "accuracy/depth=4": 0.8}
  p3 = plotting.save(plotting.plot_vs_passes(back, "accuracy"), str(tmp_path / "n.png"))
  for p in (p1, p2, p3):
    assert _is_png(p)
  with pytest.raises(ValueError, match="no run has metric"):
    plotting.plot_training_curves(runs, "nonexistent")


def test_seed_means_and_seed_figures(tmp_path):
  xs, ys = plotting.seed_mean([(2, 0.5), (1, 0.1), (2, 0.7), (3, float("nan")), (1, 0.3)])
  assert xs == [1.0, 2.0] and ys == pytest.approx([0.2, 0.6])
  rows = [{"variant": v, "seed": s, "depth": d, "accuracy": 0.1 * s + (0.5 if v == "n4" else 0.2) / d,
           "majority": 0.5} for v in ("n1", "n4") for s in (0, 1, 2) for d in (1, 2, 4)]
  rows += [{"variant": "n1", "seed": 0, "depth": "all", "accuracy": 0.3, "majority": 0.5}]
  fig = plotting.plot_depth_by_variant(rows, depth_name="t")
  ax = fig.axes[0]
  lines = {l.get_label(): l for l in ax.get_lines()}
  assert set(lines) == {"n1", "n4", "majority"} and lines["majority"].get_linestyle() == "--"
  assert list(lines["n1"].get_xdata()) == [1, 2, 4]
  assert list(lines["n4"].get_ydata()) == pytest.approx([0.1 + 0.5 / d for d in (1, 2, 4)])  # mean over seeds
  assert sum(len(c.get_offsets()) for c in ax.collections) == 18  # every seed's point (not the "all" row)
  assert _is_png(plotting.save(fig, str(tmp_path / "depth.png")))
  curves = {"n1": {0: [(100, 0.1), (200, 0.3)], 1: [(100, 0.3), (200, 0.5)]}, "n4": {0: [(400, 0.6)]}}
  fig = plotting.plot_seed_curves(curves, xlabel="training FLOPs", baseline=0.25, log_x=True)
  lines = {l.get_label(): l for l in fig.axes[0].get_lines() if not l.get_label().startswith("_")}
  assert list(lines["n1"].get_ydata()) == pytest.approx([0.2, 0.4]) and "majority" in lines
  assert fig.axes[0].get_xscale() == "log"
  assert _is_png(plotting.save(fig, str(tmp_path / "flops.png")))
  with pytest.raises(ValueError, match="no row"):
    plotting.plot_depth_by_variant([{"variant": "n1", "seed": 0, "depth": "all", "accuracy": 0.5}])
  with pytest.raises(ValueError, match="no run"):
    plotting.plot_seed_curves({"n1": {0: []}}, xlabel="tokens")


def test_evaluate_reduces_per_example_sleep_to_mean_passes_per_depth_and_relative_cost(tmp_path):
  from tasks.evaluation import Evaluator
  # Two batches of 2 examples; each example scores one position (depth 1 or 3).
  # Per example: passes summed over its slept windows, and those windows.
  batches, outs = [], []
  for depth, passes, windows in (((1, 3), (2.0, 6.0), (1.0, 2.0)), ((3, 3), (1.0, 4.0), (1.0, 1.0))):
    t = np.zeros((2, 4), np.int32)
    mask = np.zeros((2, 4), np.float32)
    mask[:, 2] = 1
    d = np.zeros((2, 4), np.int32)
    d[:, 2] = depth
    batches.append({"targets": t, "loss_mask": mask, "depth": d, "answer_id": np.zeros((2, 4), np.int32)})
    outs.append({"predictions": t, "token_loss": np.zeros((2, 4), np.float32),
                 "sleep_passes": np.asarray(passes, np.float32), "sleep_windows": np.asarray(windows, np.float32),
                 "wake_flops": np.full((2,), 10.0, np.float32), "sleep_flops": np.asarray(passes, np.float32)})
  it = iter(outs)
  result = metrics_lib.evaluate(lambda b: next(it), batches, Evaluator("answer"))
  assert result["sleep/passes"] == pytest.approx(13.0 / 5.0)        # (2 + 6 + 1 + 4) / (1 + 2 + 1 + 1)
  assert result["sleep/passes/depth=1"] == pytest.approx(2.0)        # 2 / 1
  assert result["sleep/passes/depth=3"] == pytest.approx(11.0 / 4.0)  # (6 + 1 + 4) / (2 + 1 + 1)
  assert result["sleep/relative_cost"] == pytest.approx(1.0 + 13.0 / 40.0)
  # Nothing slept (a plain transformer reports zeros): no sleep keys at all.
  zeros = {"predictions": outs[0]["predictions"], "token_loss": outs[0]["token_loss"],
           **{k: np.zeros((2,), np.float32) for k in ("sleep_passes", "sleep_windows", "wake_flops", "sleep_flops")}}
  assert not any(k.startswith("sleep/") for k in metrics_lib.evaluate(lambda b: zeros, batches[:1],
                                                                       Evaluator("answer")))


def test_halting_figure_draws_fixed_and_adaptive(tmp_path):
  fixed = {n: {"accuracy": 0.5 + 0.1 * n, "accuracy/depth=2": 0.6 + 0.05 * n} for n in (1, 2, 4)}
  adaptive = {0.1: {"accuracy": 0.8, "accuracy/depth=2": 0.75, "sleep/passes": 2.5, "sleep/passes/depth=2": 2.2},
              0.01: {"accuracy": 0.85, "accuracy/depth=2": 0.8, "sleep/passes": 3.5, "sleep/passes/depth=2": 3.1}}
  fig = plotting.plot_halting(fixed, adaptive, depth_name="t")
  lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
  assert list(lines["t=2, adaptive"].get_xdata()) == [2.2, 3.1]
  assert list(lines["all, fixed N"].get_xdata()) == [1.0, 2.0, 4.0]
  assert _is_png(plotting.save(fig, str(tmp_path / "h.png")))
  with pytest.raises(ValueError, match="nothing|no evaluation"):
    plotting.plot_halting({}, {0.1: {"accuracy": 0.5}})  # adaptive without passes: nothing to place
