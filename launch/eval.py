r"""Evaluates a run's checkpoint on its task's eval split; prints and writes per-depth accuracy.

  python -m launch.eval --workdir=/tmp/sleep_rule110
  python -m launch.eval --workdir=/tmp/sleep_rule110 --config.sleep.n_passes=4 \
      --config.task_config.t_min=8 --config.task_config.t_max=8 --output=/tmp/n4_t8.json
  python -m launch.eval --workdir=/tmp/sleep_rule110 --n_passes=1,2,4,8
  python -m launch.eval --workdir=/tmp/sleep_rule110 --halt_tol=0.3,0.1,0.03 --n_passes=1,2,4 \
      --config.sleep.max_passes=4

The run's ``config.json`` (written by ``launch/train.py``) rebuilds the model
and is the ``--config`` of this command: ``--config.a.b=value`` changes any
field for the evaluation only, with the parsing and checks of
``launch.train`` (``--override=a.b=value`` is the older spelling, still
accepted). The result goes to ``--output`` (default
``<workdir>/eval_step<k>.json``).

``--n_passes=1,2,4,8`` evaluates the same checkpoint at each sleep-pass count
``N`` (beyond the trained ``N`` too), prints one table (depths as rows, ``N``
as columns, beside the example count and the majority and chance baselines),
writes ``<workdir>/eval_n_passes.json`` (or ``--output``) and draws accuracy
against ``N`` per depth to the same path with ``.png``.

``--halt_tol=0.3,0.1,0.03`` evaluates the checkpoint with adaptive sleep at
each tolerance (cap: ``--config.sleep.max_passes``, default the run's ``N``),
and at the fixed ``N`` of ``--n_passes`` if given, and prints accuracy beside
the mean passes each depth's examples ran (``launch.tables.halting_table``).
It writes ``<workdir>/eval_halting.json`` (or ``--output``) and a PNG of
accuracy against mean passes, fixed ``N`` and adaptive side by side
(``plotting.plot_halting``). Evaluation never draws ``N``: a run trained with
``sleep.n_passes_train`` is evaluated at ``sleep.n_passes``.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import sys

from absl import app, flags
import ml_collections
from ml_collections import config_flags

from launch import cli, experiment, tables

_WORKDIR = cli.define_path("workdir", None, "The run directory (with config.json and checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest that restores).")
_BATCHES = flags.DEFINE_integer("eval_batches", 0, "Eval batches (0: the whole eval split).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Deprecated spelling of --config.key.path=value.")
_N_PASSES = flags.DEFINE_list("n_passes", [], "Evaluate at each of these sleep-pass counts N (e.g. 1,2,4,8).")
_HALT_TOL = flags.DEFINE_list("halt_tol", [], "Evaluate with adaptive sleep at each of these halting tolerances "
                              "(e.g. 0.3,0.1,0.03); the cap is --config.sleep.max_passes (default: N).")
_OUTPUT = cli.define_path("output", None, "JSON output path.")
_CONFIG_HELP = "The run's config.json; --config.a.b=value changes a field for this evaluation."


def _argv_value(argv: list[str], name: str) -> str | None:
  """The value of ``--name=v`` / ``--name v`` in ``argv`` (the last one), before absl parses it."""
  value = None
  for i, arg in enumerate(argv):
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with ``--config`` defined first as the workdir's ``config.json``.

  ``--config.a.b=value`` flags are typed by the config they change, so the
  workdir is read from ``argv`` before absl parses the rest. Without a
  readable ``config.json`` the config is empty (``main`` then reports why).
  """
  cfg = ml_collections.ConfigDict()
  workdir = _argv_value(argv, "workdir")
  if workdir:
    try:
      cfg = experiment.load_run_config(workdir)
    except ValueError as e:
      # ``--config.a.b=v`` needs the run's config to type it; say why it is missing rather than
      # let absl report that the (empty) config has no field ``a``.
      if any(a.startswith(("--config.", "-config.")) for a in argv):
        cli.fail(f"--workdir={workdir}: {e} (the --config.* changes need it)")
  def define():
    if "config" not in flags.FLAGS:
      config_flags.DEFINE_config_dict("config", cfg, _CONFIG_HELP, lock_config=True, sys_argv=argv)

  return cli.parse_flags(argv, define)


def _config_overrides(argv: list[str]) -> list[str]:
  """The ``--config.a.b=v`` and ``--override`` changes on the command line, for the record."""
  out = [a[len("--config."):] for a in argv if a.startswith("--config.")]
  return out + list(_OVERRIDE.value)


def evaluate_passes(workdir: str, cfg, n_passes, *, step=None, eval_batches=None) -> tuple[int, dict]:
  """Evaluates one checkpoint at each sleep-pass count; returns ``(step, {N: result})``.

  Args:
    workdir: a ``launch/train.py`` run directory.
    cfg: its config (a ConfigDict or dict), with any changes applied.
    n_passes: the pass counts ``N`` (any ``N >= 0``, the trained one or not),
      each evaluated with adaptive sleep off.
    step: the checkpoint step (default: the newest that restores, then pinned
      so every ``N`` sees the same parameters).
    eval_batches: eval batches (default: the whole eval split).

  Raises:
    ValueError: a negative ``N``, a plain-transformer run (it has no sleep
      passes), or a bad config.
  """
  ns = [int(n) for n in n_passes]
  if any(n < 0 for n in ns):
    raise ValueError(f"--n_passes entries must be >= 0, got {ns}")
  # A fixed N: adaptive sleep off.
  return _evaluate_each(workdir, cfg, "--n_passes", {n: dict(n_passes=n, halt_tol=None, max_passes=None)
                                                     for n in ns}, step=step, eval_batches=eval_batches)


def evaluate_halting(workdir: str, cfg, halt_tols, *, step=None, eval_batches=None) -> tuple[int, dict]:
  """Evaluates one checkpoint with adaptive sleep at each tolerance; returns ``(step, {tol: result})``.

  Args:
    workdir: a ``launch/train.py`` run directory.
    cfg: its config (a ConfigDict or dict), with any changes applied; its
      ``sleep.max_passes`` (default ``sleep.n_passes``) caps the passes.
    halt_tols: the ``halt_tol`` values (each ``>= 0``).
    step: the checkpoint step (default: the newest that restores, then pinned).
    eval_batches: eval batches (default: the whole eval split).

  Raises:
    ValueError: a negative or non-numeric tolerance, a plain-transformer run,
      or a bad config.
  """
  try:
    tols = [float(t) for t in halt_tols]
  except ValueError:
    raise ValueError(f"--halt_tol entries must be numbers, got {list(halt_tols)}") from None
  if any(not t >= 0 for t in tols):
    raise ValueError(f"--halt_tol entries must be >= 0, got {tols}")
  no_draw = dict(n_passes_train=None, n_passes_train_weights=None, n_passes_train_mean=None,
                 n_passes_train_sigma=0.5, n_passes_train_max=None)
  return _evaluate_each(workdir, cfg, "--halt_tol", {t: dict(halt_tol=t, **no_draw) for t in tols},
                        step=step, eval_batches=eval_batches)


def _evaluate_each(workdir, cfg, flag: str, settings: dict, *, step, eval_batches) -> tuple[int, dict]:
  """``(step, {key: result})``: the checkpoint evaluated once per ``settings`` entry (its ``sleep`` fields).

  The step is pinned after the first evaluation, so every setting sees the same parameters.
  """
  cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  if cfg.get("plain_transformer"):
    raise ValueError(f"{flag}: this run is the plain transformer, which has no sleep passes")
  results = {}
  for key, sleep_fields in settings.items():
    c = copy.deepcopy(cfg)
    c["sleep"].update(sleep_fields)
    step, results[key] = experiment.evaluate_run(workdir, cfg=c, step=step, eval_batches=eval_batches)
  return step, results


def passes_rows(results: dict) -> list[dict]:
  """Rows ``{"n_passes", "depth", "accuracy"}`` (depth "all" too) for ``plotting.plot_vs_passes``."""
  from launch.plotting import depth_values
  rows = []
  for n, result in results.items():
    rows += [{"n_passes": n, "depth": d, "accuracy": v} for d, v in depth_values(result, "accuracy").items()]
    rows.append({"n_passes": n, "depth": "all", "accuracy": result.get("accuracy", float("nan"))})
  return rows


def _report_halting(cfg, step, fixed, adaptive, overrides, depth_name) -> int:
  out = _OUTPUT.value or os.path.join(_WORKDIR.value, "eval_halting.json")
  cap = cfg["sleep"].get("max_passes") or cfg["sleep"]["n_passes"]
  with open(out, "w") as f:
    json.dump({"step": step, "max_passes": cap, "overrides": overrides,
               "fixed": {str(n): r for n, r in fixed.items()},
               "adaptive": {str(t): r for t, r in adaptive.items()}}, f, indent=1, sort_keys=True)
  columns = {**{f"N={n}": r for n, r in fixed.items()}, **{f"tol={t:g}": r for t, r in adaptive.items()}}
  print(f"checkpoint step {step}, adaptive sleep capped at N={cap}; accuracy/mean passes per {depth_name}:")
  print(tables.halting_table(columns, depth_name))
  print(f"wrote {out}")
  try:
    from launch import plotting
    fig = plotting.plot_halting(fixed, adaptive, depth_name=depth_name,
                                title=f"{cfg['task']}: fixed N vs adaptive sleep (step {step}, cap N={cap})")
    print(f"wrote {plotting.save(fig, os.path.splitext(out)[0] + '.png')}")
  except (ImportError, ValueError) as e:
    logging.warning("no accuracy-vs-passes figure: %s", e)
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  cli.setup()
  import tasks
  from sleep_jax.train import checkpoint as ckpt_lib

  if _OVERRIDE.value:
    logging.warning("--override is deprecated; use --config.%s", _OVERRIDE.value[0])
  overrides = _config_overrides(sys.argv[1:])
  try:
    cfg = flags.FLAGS["config"].value
    if "task" not in cfg:  # no readable config.json: say why
      experiment.load_run_config(_WORKDIR.value)
    cfg = experiment.apply_overrides(cfg.to_dict(), list(_OVERRIDE.value))
    depth_name = tasks.get_task(str(cfg["task"])).depth_name
    if _HALT_TOL.value:
      step, adaptive = evaluate_halting(_WORKDIR.value, cfg, _HALT_TOL.value, step=_STEP.value,
                                        eval_batches=_BATCHES.value or None)
      fixed = {}
      if _N_PASSES.value:
        _, fixed = evaluate_passes(_WORKDIR.value, cfg, _N_PASSES.value, step=step,
                                   eval_batches=_BATCHES.value or None)
    elif _N_PASSES.value:
      step, results = evaluate_passes(_WORKDIR.value, cfg, _N_PASSES.value, step=_STEP.value,
                                      eval_batches=_BATCHES.value or None)
    else:
      step, result = experiment.evaluate_run(_WORKDIR.value, cfg=cfg, step=_STEP.value,
                                             eval_batches=_BATCHES.value or None)
  except (ValueError, ckpt_lib.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1

  if _HALT_TOL.value:
    return _report_halting(cfg, step, fixed, adaptive, overrides, depth_name)
  if not _N_PASSES.value:
    out = _OUTPUT.value or os.path.join(_WORKDIR.value, f"eval_step{step}.json")
    with open(out, "w") as f:
      json.dump({"step": step, "overrides": overrides, **result}, f, indent=1, sort_keys=True)
    print(f"checkpoint step {step}, {int(result.get('eval/batches', 0))} eval batches:")
    print(tables.depth_table(result, depth_name))
    print(f"wrote {out}")
    return 0

  out = _OUTPUT.value or os.path.join(_WORKDIR.value, "eval_n_passes.json")
  trained = cfg["sleep"]["n_passes"]
  if cfg["sleep"].get("n_passes_train"):  # training drew N per step from these
    trained = "/".join(str(n) for n in cfg["sleep"]["n_passes_train"])
  elif cfg["sleep"].get("n_passes_train_mean"):  # a heavy-tailed draw of N per step
    trained = f"~{cfg['sleep']['n_passes_train_mean']:g} (max {cfg['sleep']['n_passes_train_max']})"
  with open(out, "w") as f:
    json.dump({"step": step, "trained_n_passes": trained, "n_passes": list(results), "overrides": overrides,
               "results": {str(n): r for n, r in results.items()}}, f, indent=1, sort_keys=True)
  print(f"checkpoint step {step} (trained with N={trained}), accuracy per {depth_name} at each N:")
  print(tables.passes_table(results, depth_name))
  print(f"deepest {depth_name} answered (accuracy >= (1 + majority) / 2 at it and every shallower one): "
        + ", ".join(f"N={n}: {tables.depth_answered(r)}" for n, r in results.items()))
  print(f"wrote {out}")
  try:
    from launch import plotting
    fig = plotting.plot_vs_passes(passes_rows(results), "accuracy",
                                  title=f"{cfg['task']}: accuracy vs N (step {step}, trained N={trained})")
    print(f"wrote {plotting.save(fig, os.path.splitext(out)[0] + '.png')}")
  except (ImportError, ValueError) as e:  # no matplotlib, or nothing to draw: the table is the result
    logging.warning("no accuracy-vs-N figure: %s", e)
  return 0


if __name__ == "__main__":
  cli.run(main, flags_parser=parse_flags)
