"""launch.sweep: variants, points, token budgets, analytic FLOPs, compute matching, tables, resume, one tiny sweep."""
import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from launch_helpers import fast_compile_env

from launch import sweep
from launch import sweep_flops
from launch import sweep_results as results_lib
from sleep_jax import cost
from sleep_jax.config import ModelConfig, SleepConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.d_model": 16, "model.n_layers": 2, "model.n_heads": 1, "model.head_dim": 16,
        "model.gdn_head_dim": 16, "train.num_steps": 2, "train.batch_size": 2, "train.eval_batches": 1,
        "train.log_every": 1}


def _config(name="rule110_small"):
  return importlib.import_module(f"launch.configs.{name}").get_config()


def _names(variants):
  return [(v.name, v.n_passes, v.replay, v.depth_multiplier, v.plain_transformer, v.compute_match)
          for v in variants]


# -- variants, points, overrides ----------------------------------------------------------------------
def test_variants_parse_and_points_run_seed_major():
  got = sweep.parse_variants(["n1", "n2", "n4", "n1_compute", "replay4", "deep4", "transformer", "n1_compute2"])
  assert _names(got) == [("n1", 1, False, 1, False, None), ("n2", 2, False, 1, False, None),
                         ("n4", 4, False, 1, False, None), ("n1_compute", 1, False, 1, False, 4),
                         ("replay4", 4, True, 1, False, None), ("deep4", 1, False, 4, False, None),
                         ("transformer", 1, False, 1, True, None), ("n1_compute2", 1, False, 1, False, 2)]
  # The largest N to match counts replay runs too.
  assert sweep.parse_variants(["n1", "replay8", "n1_compute"])[2].compute_match == 8
  for bad, match in ((["n1", "n1"], "repeats"), (["n3x"], "unknown variant"), (["n1", "n1_compute"], "no N > 1"),
                     ([], "empty"), (["deep0"], "multiplier")):
    with pytest.raises(ValueError, match=match):
      sweep.parse_variants(bad)
  points = sweep.expand_points(sweep.parse_variants(["n1", "n4"]), [0, 1])
  assert [p.name for p in points] == ["n1_s0", "n4_s0", "n1_s1", "n4_s1"]
  assert sweep.expand_points(sweep.parse_variants(["n2"]), [3], [5])[0].name == "n2_d5_s3"
  with pytest.raises(ValueError, match="repeats"):
    sweep.expand_points(points[:1], [0, 0])
  order = sorted(["transformer", "nrand4", "deep4", "n4", "n1_compute", "replay4", "n1", "n2"],
                 key=sweep.variant_sort_key)
  assert order == ["n1", "n2", "n4", "n1_compute", "replay4", "deep4", "nrand4", "transformer"]
  nrand = sweep.parse_variants(["nrand4"])[0]
  assert (nrand.n_passes, nrand.n_passes_train) == (4, (1, 2, 3, 4))
  with pytest.raises(ValueError, match="K >= 2"):
    sweep.parse_variants(["nrand1"])


def test_variant_overrides_build_the_intended_experiments():
  from launch import experiment
  cfg = _config()
  v = {x.name: x for x in sweep.parse_variants(["n4", "replay4", "deep4", "transformer", "n1_compute"])}
  # sleep.replay is set explicitly (False) whenever the config has the field, so a base config with
  # replay on cannot leak into the plain-N variants.
  assert sweep.variant_overrides(v["n4"], cfg) == {"sleep.n_passes": 4, "plain_transformer": False,
                                                   "sleep.replay": False}
  assert sweep.variant_overrides(v["replay4"], cfg) == {"sleep.n_passes": 4, "plain_transformer": False,
                                                        "sleep.replay": True}
  assert sweep.variant_overrides(v["deep4"], cfg) == {"sleep.n_passes": 1, "plain_transformer": False,
                                                      "model.n_layers": 16, "sleep.replay": False}
  cfg.model.layout = "attn,gdn,gdn"
  assert sweep.variant_overrides(v["deep4"], cfg)["model.layout"] == ",".join(["attn", "gdn", "gdn"] * 4)
  cfg = _config()
  # Reference: the same changes made by hand on the ConfigDict.
  for name, edit in (("replay4", lambda c: (c.sleep.update(n_passes=4), c.sleep.__setattr__("replay", True))),
                     ("deep4", lambda c: c.model.update(n_layers=16)),
                     ("transformer", lambda c: c.__setattr__("plain_transformer", True))):
    point = sweep.Point(v[name], seed=7)
    got, values = sweep.point_config(point, cfg, fixed_data=20000)
    want = _config()
    with want.unlocked():
      edit(want)
      want.train.update(seed=7, progress=False)
      want.task_config.num_train_examples = 20000
    assert experiment.experiment_from_config(got.to_dict()) == experiment.experiment_from_config(want.to_dict())
    assert values["train.seed"] == 7 and values["task_config.num_train_examples"] == 20000
  nrand = sweep.parse_variants(["nrand4"])[0]
  assert sweep.variant_overrides(nrand, cfg) == {"sleep.n_passes": 4, "plain_transformer": False,
                                                 "sleep.replay": False, "sleep.n_passes_train": (1, 2, 3, 4)}
  exp = experiment.experiment_from_config(sweep.point_config(sweep.Point(nrand, 0), cfg)[0].to_dict())
  assert exp.sleep.n_passes == 4 and exp.sleep.n_passes_train == (1, 2, 3, 4)
  assert {exp.sleep.draw_n_passes(0, s) for s in range(64)} == {1, 2, 3, 4}
  exp = experiment.experiment_from_config(sweep.point_config(sweep.Point(v["deep4"], 0), cfg)[0].to_dict())
  assert exp.model.block_types == ("attn", "gdn") * 8 and exp.sleep.n_passes == 1
  assert cfg.model.n_layers == 4 and not cfg.plain_transformer  # the sweep's config is left alone
  pinned, _ = sweep.point_config(sweep.Point(v["n4"], 0, train_depth=3), cfg, depth_fields=("t_min", "t_max"))
  assert (pinned.task_config.t_min, pinned.task_config.t_max) == (3, 3)


def test_tokens_set_steps_as_the_trainer_counts_tokens():
  from launch import experiment
  assert sweep.steps_for_tokens(6.5e6, 128, 17) == 2988  # 6.5e6 / 2176 = 2987.13
  assert sweep.steps_for_tokens(2176 * 10, 128, 17) == 10  # an exact budget takes no extra step
  assert sweep.steps_for_tokens(1, 128, 17) == 1
  with pytest.raises(ValueError, match="tokens"):
    sweep.steps_for_tokens(0, 128, 17)
  cfg = _config()
  got, values = sweep.point_config(sweep.Point(sweep.Variant("n2", n_passes=2), 0), cfg, tokens=1e5)
  exp = experiment.experiment_from_config(got.to_dict())
  t = exp.task.seq_len(exp.task_config)
  assert values["train.num_steps"] == got.train.num_steps == math.ceil(1e5 / (exp.train.batch_size * t))


# -- FLOPs and compute matching ------------------------------------------------------------------------
def _tiny_model(**kw):
  return ModelConfig(vocab_size=8, d_model=4, layout=("attn", "gdn"), n_heads=1, head_dim=2, gdn_head_dim=2,
                     conv_size=2, mlp_hidden=8, **kw)


def test_sequence_flops_match_a_hand_count():
  # d=4, V=8, one attention head of 2, one GDN head Dk=Dv=2, conv 2, MLP 8; T=5, L=3: windows [0,3) (sleeps)
  # and [3,5). Per token, 2 FLOPs per multiply-add of each matrix (in, out):
  linear = lambda shapes: sum(2 * i * o for i, o in shapes)
  mlp = linear([(4, 8), (4, 8), (8, 4)])
  attn = lambda keys: linear([(4, 2)] * 3 + [(2, 4)]) + 2 * 2 * keys * 2 + mlp  # + q.k and p.v over `keys`
  gdn = linear([(4, 2)] * 3 + [(4, 1)] * 2 + [(4, 2), (2, 4)]) + 2 * 2 * (2 + 2 + 2) + 8 * 2 * 2 + mlp
  head = linear([(4, 8)])
  w0, w1 = 3 * (attn(3) + gdn + head), 2 * (attn(2) + gdn + head)
  core0 = 3 * (attn(3) + gdn)  # one more pass of both blocks (no prelude / coda) over window 0
  model = _tiny_model()
  for n in (1, 2, 3):
    got = cost.sequence_flops(model, SleepConfig(window=3, n_passes=n), (True, False), 5)
    assert got.forward == w0 + w1 + (n - 1) * core0
    assert got.train == 3 * got.forward
  # Only the last k passes are differentiated: the others cost their forward only.
  got = cost.sequence_flops(model, SleepConfig(window=3, n_passes=3, grad_passes=1), (True, False), 5)
  assert got.train == 3 * (w0 + w1) + 3 * core0 + core0
  # replay re-reads the window: same compute; N = 0 forgets it: the wake pass only.
  assert (cost.sequence_flops(model, SleepConfig(window=3, n_passes=3, replay=True), (True, False), 5)
          == cost.sequence_flops(model, SleepConfig(window=3, n_passes=3), (True, False), 5))
  assert cost.sequence_flops(model, SleepConfig(window=3, n_passes=0), (True, False), 5).forward == w0 + w1
  # Sliding eviction attends over a kept prefix too: L empty keys before window 0, then window 0's 3 keys.
  hard = cost.sequence_flops(model, SleepConfig(window=3, n_passes=3), (True, False), 5)
  sliding = cost.sequence_flops(model, SleepConfig(window=3, n_passes=3, eviction="sliding"),
                                       (True, False), 5)
  assert sliding.forward - hard.forward == 4 * 3 * 3 * 2 * 3 + 4 * 2 * 3 * 2 * 1
  # A coda runs once more after the sleep passes; the prelude does not.
  coda = cost.sequence_flops(_tiny_model(coda=1), SleepConfig(window=3, n_passes=3), (True, False), 5)
  assert coda.forward == w0 + w1 + 2 * 3 * attn(3) + 3 * gdn
  with pytest.raises(ValueError, match="schedule"):
    cost.sequence_flops(model, SleepConfig(window=3), (True,), 5)


def test_the_sweeps_training_flops_are_cost_py_for_every_variant_kind(tmp_path):
  from launch import experiment
  cfg = _config()
  names = ["n1", "n2", "n4", "replay2", "deep4", "nrand4", "n1_compute4", "transformer"]
  points = sweep.expand_points(sweep.parse_variants(names), [0])
  runs = {r.point.variant.name: r for r in sweep.plan(cfg, str(tmp_path), points, tokens=1e6, write=False)}
  seq = {}
  for point in points:
    c, _ = sweep.point_config(point, cfg, tokens=1e6)
    exp = experiment.experiment_from_config(c.to_dict())
    # The count itself: sleep_jax.cost over the point's own model, sleep config and schedule.
    seq[point.variant.name] = f = cost.sequence_flops(exp.model, exp.sleep, experiment.task_schedule(exp),
                                                      exp.task.seq_len(exp.task_config))
    run = runs[point.variant.name]
    assert run.train_flops == run.num_steps * exp.train.batch_size * f.train, point.variant.name
  base = runs["n1"].num_steps
  assert all(runs[n].num_steps == base for n in names if n != "n1_compute4")
  # Independent relations between the kinds, from cost.py's pieces:
  exp1 = experiment.experiment_from_config(sweep.point_config(points[0], cfg, tokens=1e6)[0].to_dict())
  schedule = experiment.task_schedule(exp1)
  spans = cost.window_spans(exp1.task.seq_len(exp1.task_config), exp1.sleep.window)
  core = sum(cost.window_flops(exp1.model, exp1.sleep, z - a).core for (a, z), s in zip(spans, schedule) if s)
  unembed = sum(cost.window_flops(exp1.model, exp1.sleep, z - a).unembed for a, z in spans)
  for n in (2, 4):  # n: N - 1 more core passes on every sleeping window (no coda here), 3x for training
    assert seq[f"n{n}"].forward == pytest.approx(seq["n1"].forward + (n - 1) * core)
    assert seq[f"n{n}"].train == pytest.approx(3 * seq[f"n{n}"].forward)
  assert seq["replay2"] == seq["n2"]  # replay changes the core's input, not its compute
  # deep: 4x the layers, no sleep: 4x the block FLOPs, one output projection.
  assert seq["deep4"].forward - unembed == pytest.approx(4 * (seq["n1"].forward - unembed))
  # nrand4: the expectation over N uniform in {1, 2, 3, 4}; evaluation runs N = 4.
  n3_train = seq["n1"].train + 3 * 2 * core  # N = 3: two more core passes, forward and backward
  assert seq["nrand4"].train == pytest.approx((seq["n1"].train + seq["n2"].train + n3_train + seq["n4"].train) / 4)
  assert seq["nrand4"].forward == seq["n4"].forward
  # compute-matched: N = 1 for as many more steps as N = 4's FLOPs buy (rounded up to a whole step).
  assert runs["n1_compute4"].num_steps == math.ceil(base * seq["n4"].train / seq["n1"].train - 1e-9)
  per_step = runs["n1"].train_flops / base
  assert runs["n4"].train_flops <= runs["n1_compute4"].train_flops < runs["n4"].train_flops + per_step
  # the plain transformer has no sleep passes: its training is forward + backward of its one pass.
  assert seq["transformer"].train == pytest.approx(3 * seq["transformer"].forward)


def test_drawn_n_costs_its_expected_training_flops():
  import dataclasses
  from launch import experiment
  exp = experiment.experiment_from_config(_config().to_dict())
  at = lambda **kw: sweep_flops.experiment_flops(dataclasses.replace(exp, sleep=dataclasses.replace(exp.sleep, **kw)))
  drawn = at(n_passes_train=(1, 4), n_passes_train_weights=(3.0, 1.0))
  assert drawn.train == pytest.approx(0.75 * at(n_passes=1).train + 0.25 * at(n_passes=4).train)
  assert drawn.forward == at(n_passes=1).forward  # evaluation runs n_passes


def test_compute_matched_n1_spends_the_flops_of_the_largest_n(tmp_path):
  cfg = _config()
  runs = sweep.plan(cfg, str(tmp_path), sweep.expand_points(sweep.parse_variants(["n1", "n4", "n1_compute"]), [0]),
                    tokens=1e6, write=False)
  n1, n4, n1c = runs
  assert n1.num_steps == n4.num_steps
  per_step = n1.train_flops / n1.num_steps
  assert n4.train_flops <= n1c.train_flops < n4.train_flops + per_step
  mult = sweep.compute_multiplier(cfg, 4)
  assert n1c.num_steps == math.ceil(n1.num_steps * mult)
  assert mult == pytest.approx(n4.train_flops / n1.train_flops)
  # rule110_small sleeps on one window of 16 tokens and predicts in a window of 1, so N = 4 costs a little
  # under 4x (the output projection and the prediction window run once).
  assert 3 < mult < 4
  assert sweep_flops.matched_steps(10, 1.5) == 15 and sweep_flops.matched_steps(10, 1.51) == 16


# -- tables ----------------------------------------------------------------------------------------------
def _result(acc4, acc6, *, with_baselines=True):
  r = {"accuracy/depth=4": acc4, "accuracy/depth=6": acc6, "loss/depth=4": 1.0, "loss/depth=6": 2.0,
       "accuracy": (acc4 + acc6) / 2, "loss": 1.5}
  if with_baselines:
    r.update({"majority/depth=4": 0.5, "majority/depth=6": 0.25, "chance/depth=4": 0.1, "chance/depth=6": 0.1,
              "count/depth=4": 100.0, "count/depth=6": 100.0, "majority": 0.4, "chance": 0.1})
  return r


def test_rows_summary_and_csv(tmp_path):
  accs = {("n1", 0): (0.9, 0.2), ("n1", 1): (0.8, 0.3), ("n1", 2): (0.7, 0.4), ("n4", 0): (0.95, 0.6)}
  rows = []
  for (variant, seed), (a4, a6) in accs.items():
    base = {"task": "rule110", "variant": variant, "n_passes": int(variant[1:]), "seed": seed, "tokens": 1000,
            "steps": 10, "train_flops": 1e9, "wall_s": 5.0, "train_depth": "", "status": "done",
            "run": f"{variant}_s{seed}"}
    rows += results_lib.eval_rows(_result(a4, a6, with_baselines=variant == "n1"), base)
  assert [r["depth"] for r in rows[:3]] == [4, 6, "all"]
  assert rows[0]["stderr"] == pytest.approx(math.sqrt(0.9 * 0.1 / 100))
  assert rows[2]["count"] == 200.0 and rows[2]["majority"] == 0.4  # counts add up when "count" is absent
  n4_all = rows[-1]
  assert math.isnan(n4_all["majority"]) and math.isnan(n4_all["count"]) and math.isnan(n4_all["stderr"])

  summary = {(s["variant"], s["depth"]): s for s in results_lib.summarize(rows)}
  s = summary["n1", 6]
  vals = np.array([0.2, 0.3, 0.4])
  assert s["seeds"] == {0: 0.2, 1: 0.3, 2: 0.4} and s["n"] == 3 and s["stderr_kind"] == "seeds"
  assert s["mean"] == pytest.approx(vals.mean())
  assert s["stderr"] == pytest.approx(vals.std(ddof=1) / np.sqrt(3))
  assert s["majority"] == 0.25 and s["chance"] == pytest.approx(0.1)
  assert summary["n1", "all"]["mean"] == pytest.approx(np.mean([0.55, 0.55, 0.55]))
  one = summary["n4", 4]  # one seed, no count: no standard error
  assert one["n"] == 1 and math.isnan(one["stderr"]) and math.isnan(one["majority"])
  assert list(dict.fromkeys(k[0] for k in summary)) == ["n1", "n4"]

  path = results_lib.write_csv(rows, str(tmp_path / "results.csv"))
  with open(path) as f:
    header = f.readline().strip().split(",")
  assert tuple(header) == results_lib.COLUMNS
  assert {"task", "variant", "n_passes", "seed", "depth", "accuracy", "majority", "chance", "count", "stderr",
          "tokens", "train_flops", "wall_s", "loss", "steps"} <= set(header)
  back = results_lib.read_csv(path)
  assert len(back) == len(rows) and back[0]["accuracy"] == 0.9 and back[2]["depth"] == "all"
  assert math.isnan(back[-1]["majority"])


# -- resume: which runs are skipped, resumed or refused --------------------------------------------------
def test_run_status_and_config_conflicts(tmp_path):
  d = str(tmp_path / "run")
  assert results_lib.run_status(d, 10) == "new"
  os.makedirs(d)
  open(os.path.join(d, "metrics.jsonl"), "w").close()
  assert results_lib.run_status(d, 10) == "partial"
  with open(os.path.join(d, "eval.json"), "w") as f:
    json.dump({"step": 5, "accuracy": 0.5}, f)
  assert results_lib.run_status(d, 10) == "partial"  # an earlier, shorter run's final evaluation
  with open(os.path.join(d, "eval.json"), "w") as f:
    json.dump({"step": 10, "accuracy": 0.5}, f)
  assert results_lib.run_status(d, 10) == "done"

  cfg = _config()
  point = sweep.Point(sweep.Variant("n2", n_passes=2), 0)
  c, values = sweep.point_config(point, cfg)
  run_dir, status = sweep.prepare_run(str(tmp_path), point, c, values, {"config_file": "x.py"})
  assert status == "new" and os.path.exists(os.path.join(run_dir, "sweep_config.json"))
  assert json.load(open(os.path.join(run_dir, "sweep_point.json")))["variant"] == "n2"
  # Bookkeeping fields do not make another run; the step count (the LR schedule) does.
  same = sweep.set_fields(c, {"train.progress": True, "train.log_every": 7})
  assert sweep.config_conflict(run_dir, json.loads(json.dumps(same.to_dict(), default=list))) is None
  longer = sweep.set_fields(c, {"train.num_steps": 1234})
  why = sweep.config_conflict(run_dir, json.loads(json.dumps(longer.to_dict(), default=list)))
  assert "train.num_steps: 600 -> 1234" in why
  _, status = sweep.prepare_run(str(tmp_path), point, longer, values, {})
  assert status.startswith("conflict")
  with open(os.path.join(run_dir, "eval.json"), "w") as f:
    json.dump({"step": 600}, f)
  assert sweep.prepare_run(str(tmp_path), point, c, values, {})[1] == "done"


def test_wall_time_adds_up_over_resumed_processes(tmp_path):
  d = str(tmp_path)
  assert math.isnan(results_lib.wall_seconds(d)[0])
  records = [{"step": 50, "steps_per_s": 10.0}, {"step": 100, "steps_per_s": 5.0}]
  assert results_lib.wall_seconds(d, records)[0] == pytest.approx(15.0)  # outside a sweep: the steps' time
  results_lib.add_wall_time(d, 30.0, finished=False, startup_s=12.0)  # stopped, then resumed
  rec = results_lib.add_wall_time(d, 20.0, finished=True, startup_s=8.0)
  assert rec == {"wall_s": 50.0, "startup_s": 20.0, "processes": 2, "finished": True}
  assert results_lib.wall_seconds(d, records) == (50.0, 20.0)
  assert results_lib.add_wall_time(d, 5.0, finished=True)["startup_s"] == 25.0  # no train step: all start-up


def test_processes_are_pinned_to_one_core_each(monkeypatch):
  env = sweep.child_env(True, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": "/bin"})
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                      "--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
  assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONPATH"].split(os.pathsep)[0] == REPO
  assert "XLA_FLAGS" not in sweep.child_env(False, {"PATH": "/bin"})
  assert sweep.run_command("/r", 3)[:3] == ["taskset", "-c", "3"]
  assert sweep.run_command("/r", None)[0] == sys.executable
  monkeypatch.setenv(sweep.NO_PIN_ENV, "1")
  assert sweep.pin_cores(1, True) is None
  monkeypatch.delenv(sweep.NO_PIN_ENV)
  assert sweep.pin_cores(1, False) is None
  assert sweep.pin_cores(len(os.sched_getaffinity(0)) + 1, True) is None
  if sweep.shutil.which("taskset"):
    assert sweep.pin_cores(1, True) == [min(os.sched_getaffinity(0))]


# -- report from run directories (no training) -----------------------------------------------------------
def _fake_run(root, variant, seed, accs, *, finished=True):
  cfg = _config()
  point = sweep.Point(sweep.parse_variants([variant])[0], seed)
  c, values = sweep.point_config(point, sweep.set_fields(cfg, TINY))
  run_dir, _ = sweep.prepare_run(root, point, c, values, {})
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(c.to_dict(), f, default=list)
  with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for step, (a4, a6) in enumerate(accs, 1):
      f.write(json.dumps({"kind": "train", "step": step, "tokens": step * 34, "steps_per_s": 0.5}) + "\n")
      f.write(json.dumps({"kind": "eval", "step": step, "tokens": step * 34, **_result(a4, a6)}) + "\n")
  if finished:
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
      json.dump({"step": len(accs), **_result(*accs[-1])}, f)
  return run_dir


def test_report_rebuilds_tables_and_figures_from_run_dirs(tmp_path):
  root = str(tmp_path)
  for seed in (0, 1):
    _fake_run(root, "n1", seed, [(0.5, 0.1), (0.6 + 0.1 * seed, 0.2)])
    _fake_run(root, "n2", seed, [(0.6, 0.2), (0.8, 0.4 + 0.1 * seed)])
  _fake_run(root, "transformer", 0, [(0.9, 0.3)], finished=False)
  rows, paths = sweep.report(root, quiet=True)
  assert [os.path.basename(p) for p in paths] == ["results.csv", "results.md", "accuracy_vs_depth.png",
                                                  "accuracy_vs_tokens.png", "accuracy_vs_flops.png"]
  for p in paths[2:]:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  by = {(r["run"], r["depth"]): r for r in rows}
  assert by["n1_s1", 4]["accuracy"] == pytest.approx(0.7) and by["n1_s1", 4]["steps"] == 2
  assert by["n1_s1", 4]["tokens"] == 2 * 2 * 17 and by["n1_s1", 4]["wall_s"] == pytest.approx(4.0)
  assert math.isnan(by["n1_s1", 4]["startup_s"])  # no sweep_timing.json: estimated from the train records
  assert by["n2_s0", "all"]["train_flops"] > by["n1_s0", "all"]["train_flops"]
  assert by["transformer_s0", 4]["status"] == "partial"  # its latest eval record stands in
  md = open(paths[1]).read()
  # Seeds 0 and 1 were scored on their own eval sets (no eval_seed): the baseline is the mean over the two sets.
  assert "| n1 | 0.650 ± 0.050 [0.600 0.700]" in md
  assert "| *majority* (mean of 2 eval sets) | 0.500 | 0.250 | 0.400 |" in md
  assert md.index("| n1 |") < md.index("| n2 |") < md.index("| transformer |")
  assert [r["run"] for r in rows[::3]] == ["n1_s0", "n1_s1", "n2_s0", "n2_s1", "transformer_s0"]
  with pytest.raises(ValueError, match="no sweep run"):
    sweep.report(str(tmp_path / "empty"), quiet=True)


def test_report_summarises_runs_evaluated_at_other_sleep_settings(tmp_path):
  root = str(tmp_path)
  dirs = {seed: _fake_run(root, "n4", seed, [(0.5, 0.1)]) for seed in (0, 1)}
  _fake_run(root, "n1", 0, [(0.5, 0.1)])  # not evaluated at other settings: no table of its own
  res = lambda a6, passes=None: {"accuracy/depth=4": 1.0, "accuracy/depth=6": a6, "accuracy": 0.5 + a6 / 2,
                                 "majority/depth=6": 0.25, "majority": 0.5,
                                 **({} if passes is None else {"sleep/passes": passes})}
  # Seed 0: launch.eval --n_passes=1,4 (an older file, without pass counts); seed 1: --n_passes=4 --halt_tol=0.5.
  with open(os.path.join(dirs[0], "eval_n_passes.json"), "w") as f:
    json.dump({"step": 2, "n_passes": [1, 4], "results": {"1": res(0.2), "4": res(0.8)}}, f)
  with open(os.path.join(dirs[1], "eval_halting.json"), "w") as f:
    json.dump({"step": 2, "max_passes": 8, "fixed": {"4": res(0.6, 4.0)}, "adaptive": {"0.5": res(0.7, 3.25)}}, f)
  _, paths = sweep.report(root, quiet=True)
  assert os.path.basename(paths[2]) == "sleep_settings.md"
  md = open(paths[2]).read().splitlines()
  assert "## n4 (seeds 0, 1)" in md and not any(line.startswith("## n1") for line in md)
  assert "| setting | mean passes | t=6 | all |" in md
  assert "| N=1 | 1.00 [1.00] | 0.200 [0.200] | 0.600 [0.600] |" in md
  assert "| N=4 | 4.00 [4.00 4.00] | 0.700 [0.800 0.600] | 0.850 [0.900 0.800] |" in md
  assert "| tol=0.5 | 3.25 [3.25] | 0.700 [0.700] | 0.850 [0.850] |" in md
  assert "| *majority* | | 0.250 | 0.500 |" in md
  assert md.index("| N=1 | 1.00 [1.00] | 0.200 [0.200] | 0.600 [0.600] |") < md.index(
      "| tol=0.5 | 3.25 [3.25] | 0.700 [0.700] | 0.850 [0.850] |")


# -- one tiny sweep end to end ---------------------------------------------------------------------------
def _sweep_cli(*args, env_extra=None):
  # No fake devices (those of conftest.py would have to divide the batch); the runs inherit the fast compile.
  env = fast_compile_env(dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {})), keep_xla_flags=False)
  return subprocess.run([sys.executable, "-m", "launch.sweep", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)


def test_tiny_sweep_trains_skips_finished_and_reports(tmp_path):
  root = str(tmp_path / "sweep")
  args = lambda **kw: (["--config=launch/configs/rule110_small.py", f"--workdir={root}", "--variants=n1,n2",
                        "--seeds=0"] + [f"--config.{k}={v}" for k, v in {**TINY, **kw}.items()])
  # Unpinned: test runs share their cores with other work (pin_cores and run_command are tested above).
  p = _sweep_cli(*args(), "--parallel=2", env_extra={sweep.NO_PIN_ENV: "1"})
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert "2 to train, 0 finished" in p.stdout
  csv_path = os.path.join(root, "results.csv")
  rows = results_lib.read_csv(csv_path)
  assert {(r["variant"], r["depth"]) for r in rows} >= {("n1", "all"), ("n2", "all")}
  for r in rows:
    metrics = [json.loads(l) for l in open(os.path.join(root, r["run"], "metrics.jsonl"))]
    assert r["tokens"] == metrics[-1]["tokens"] == 2 * 2 * 17 and r["steps"] == 2  # as the trainer counts
    assert 0 < r["startup_s"] < r["wall_s"] and 0 <= r["accuracy"] <= 1 and r["status"] == "done"
  assert {r["n_passes"] for r in rows if r["variant"] == "n2"} == {2}
  for name in ("results.md", "accuracy_vs_depth.png", "accuracy_vs_tokens.png", "accuracy_vs_flops.png"):
    assert os.path.exists(os.path.join(root, name))
  table = open(csv_path).read()
  # Again: nothing to train (finished runs are skipped), the same table.
  p = _sweep_cli(*args(), "--parallel=1")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "0 to train, 2 finished" in p.stdout and open(csv_path).read() == table
  # A changed budget is refused, not resumed on another schedule.
  cfg = sweep.set_fields(_config(), {**TINY, "train.num_steps": 3})
  planned = sweep.plan(cfg, root, sweep.expand_points(sweep.parse_variants(["n1"]), [0]), write=False)
  assert planned[0].status.startswith("conflict") and "train.num_steps: 2 -> 3" in planned[0].status
  os.remove(csv_path)
  p = _sweep_cli(f"--workdir={root}", "--report")
  assert p.returncode == 0 and "| n2 |" in p.stdout, p.stderr
  assert open(csv_path).read() == table
