r"""Brings sleep to a model trained without it: inserts Gated DeltaNet blocks into a run's checkpoint.

  python -m launch.retrofit --from_workdir=/tmp/rule110_attn --insert=1,3 --out=/tmp/rule110_retrofit
  python -m launch.train --config=/tmp/rule110_retrofit/config.py --workdir=/tmp/rule110_sleep \
      --config.sleep.n_passes=4

A Hugging Face hybrid (``sleep_jax.load_pretrained``: a Qwen3-Next-style
``config.json`` + ``*.safetensors`` directory) is a source too; ``--insert`` is
then optional and ``--task`` / ``--task_preset`` name the task the run
directory trains on (the model's vocabulary may be larger than the task's;
the task's ids index its first rows)::

  python -m launch.retrofit --from_hf=~/models/my-hybrid --task=rule110 --out=/tmp/hf_rule110 [--insert=2]

The source is any ``launch/train.py`` workdir: an all-attention run
(``plain_transformer``, which saw the whole sequence) or a hybrid one. Its
``config.json`` rebuilds the model, the newest checkpoint that restores (or
``--step``) supplies the parameters, and ``sleep_jax.retrofit.insert_gdn_blocks``
inserts GDN blocks at ``--insert`` (indices in the NEW layout). The new
blocks' output projections are zero, so the retrofitted model computes the
same function as the source model under the same windowing; training then
teaches them to write and read fast weights.

``--out`` is written like a run directory, so both ``launch.train``'s
``--config.train.init_from`` and ``launch.eval --workdir`` read it:

* ``checkpoints/0/``: the new parameters (orbax, the ``state`` item holding
  ``{"params": ...}`` with the parameter names of a train state);
* ``config.json``: the source's config with the new layout, the task's own
  windowing (a plain-transformer source trains under the task's eviction from
  here on) and ``train.init_from`` set to ``--out``;
* ``config.py``: a ``--config`` file for ``launch.train`` returning that config;
* ``retrofit.json``: the source, its step, the old and new layouts and the
  inserted positions.

It prints the new layout and the ``launch.train`` flags to use: either the
generated config file, or the source run's own command with
``--config.model.layout=... --config.model.n_layers=... --config.train.init_from=<out>`` (and
``--config.plain_transformer=False`` for a plain-transformer source). The
number of sleep passes ``N`` is a property of the forward, not of the
parameters: add ``--config.sleep.n_passes=N`` to either.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

from absl import app, flags

from launch import cli, experiment, run_config

RETROFIT_JSON = "retrofit.json"
CONFIG_PY = "config.py"
_CONFIG_PY_TEXT = '''"""A run started from the retrofitted checkpoint beside this file (written by launch.retrofit).

  python -m launch.train --config=<this file> --workdir=<new run> [--config.sleep.n_passes=4]
"""
import os

from launch import experiment


def get_config():
  return experiment.load_run_config(os.path.dirname(os.path.abspath(__file__)))
'''


@dataclasses.dataclass(frozen=True)
class Retrofitted:
  """What :func:`retrofit_run` wrote.

  Attributes:
    out: the output directory (absolute).
    source: the source workdir (absolute).
    source_step: the source checkpoint step the parameters came from.
    source_layout: the source model's block types.
    source_plain_transformer: the source was the all-attention baseline.
    layout: the new block types.
    positions: where GDN blocks were inserted (new layout indices, sorted).
    prelude: the new model's prelude blocks.
    coda: the new model's coda blocks.
    flags: ``launch.train`` flags to add to the source run's own command.
    source_format: ``"run"`` (a ``launch.train`` workdir) or ``"huggingface"``.
  """
  out: str
  source: str
  source_step: int
  source_layout: tuple[str, ...]
  source_plain_transformer: bool
  layout: tuple[str, ...]
  positions: tuple[int, ...]
  prelude: int
  coda: int
  flags: tuple[str, ...]
  source_format: str = "run"

  @property
  def config_file(self) -> str:
    return os.path.join(self.out, CONFIG_PY)


def parse_positions(text: str) -> tuple[int, ...]:
  """``"1,3"`` -> ``(1, 3)``.

  Raises:
    ValueError: an empty list or an entry that is not an integer.
  """
  items = [s.strip() for s in str(text or "").split(",") if s.strip()]
  if not items:
    raise ValueError("--insert names no positions; give new-layout indices, e.g. --insert=1,3")
  out = []
  for s in items:
    try:
      out.append(int(s))
    except ValueError:
      raise ValueError(f"--insert={text}: {s!r} is not an integer position") from None
  return tuple(out)


def check_positions(positions: Sequence[int], n_old: int, text: str | None = None) -> tuple[int, ...]:
  """Checks insertion indices against the new layout of ``n_old + len(positions)`` blocks; returns them sorted.

  Raises:
    ValueError: repeated or out-of-range positions (one line, naming the range).
  """
  given = text if text is not None else ",".join(str(p) for p in positions)
  pos = tuple(sorted(int(p) for p in positions))
  n_new = n_old + len(pos)
  if len(set(pos)) != len(pos):
    raise ValueError(f"--insert={given}: positions must be distinct")
  bad = [p for p in pos if not 0 <= p < n_new]
  if bad:
    raise ValueError(f"--insert={given}: positions index the new layout of {n_new} blocks ({n_old} old + "
                     f"{len(pos)} inserted), so each must lie in [0, {n_new}); got {bad}")
  return pos


def _strip(e: Exception) -> str:
  # load_params words its errors for --config.train.init_from; here the checkpoint is the source.
  msg = str(e)
  return msg[len("init_from: "):] if msg.startswith("init_from: ") else msg


def new_run_config(source_cfg: dict, layout: Sequence[str], prelude: int, coda: int, init_from: str) -> dict:
  """The source run's config (``config.json`` dict) for training the retrofitted model.

  The layout, prelude and coda are the new model's; ``init_from`` points at
  the retrofitted checkpoint. A plain-transformer source becomes a windowed
  run: ``plain_transformer`` off, so the task's window and eviction apply, and
  the sleep fields the baseline ignored reset to what it ran with (``N = 1``,
  no drawn or adaptive ``N``).
  """
  cfg = json.loads(json.dumps(source_cfg, default=list))
  cfg["model"].update(layout=",".join(layout), n_layers=len(layout), prelude=int(prelude), coda=int(coda))
  if cfg.get("plain_transformer"):
    cfg["sleep"].update(n_passes=1, n_passes_train=[], n_passes_train_weights=[], halt_tol=0.0, max_passes=0)
  cfg["plain_transformer"] = False
  cfg["train"]["init_from"] = init_from
  return cfg


def _abstract_params(model_config):
  from flax import nnx

  from sleep_jax.model import HybridLM
  abstract = nnx.eval_shape(lambda: HybridLM(model_config, rngs=nnx.Rngs(0)))
  return nnx.split(abstract, nnx.Param, ...)[1]


def write_run_dir(out: str, params, cfg: dict, meta: dict) -> None:
  """Writes a run directory: step 0's parameters, ``config.json``, ``config.py`` and ``retrofit.json``."""
  from sleep_jax.train import checkpoint as ckpt_lib
  os.makedirs(out, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(out), max_to_keep=1)
  try:
    ckpt.save(0, {"params": params}, meta={"retrofit": meta, "config": cfg})
  finally:
    ckpt.close()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(cfg, f, indent=1, sort_keys=True)
  with open(os.path.join(out, CONFIG_PY), "w") as f:
    f.write(_CONFIG_PY_TEXT)
  with open(os.path.join(out, RETROFIT_JSON), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)


def retrofit_run(source: str, positions: Sequence[int], out: str, *, step: int | None = None,
                 seed: int = 0, positions_text: str | None = None) -> Retrofitted:
  """Inserts GDN blocks into a run's checkpoint and writes the retrofitted run directory ``out``.

  Args:
    source: a ``launch/train.py`` workdir (``config.json`` and ``checkpoints/``).
    positions: GDN block indices in the new layout.
    out: the directory to write (must not hold a checkpoint yet).
    step: the source checkpoint step (default: the newest that restores).
    seed: initialises the new blocks' parameters other than the zeroed
      output projections.
    positions_text: the ``--insert`` text, for error messages.

  Returns:
    A :class:`Retrofitted` describing what was written.

  Raises:
    ValueError: (one line) no such workdir, no or no restorable checkpoint,
      parameters that do not match the run's config, bad positions, or an
      ``out`` that already holds a checkpoint or is the source.
  """
  from flax import nnx

  from sleep_jax.model import HybridLM
  from sleep_jax.retrofit import insert_gdn_blocks
  from sleep_jax.train import checkpoint as ckpt_lib

  source = os.path.abspath(source)
  out = os.path.abspath(out)
  if not os.path.isdir(source):
    raise ValueError(f"--from_workdir={source}: no such directory")
  if out == source:
    raise ValueError("--out must be a new directory, not the source workdir")
  if os.path.isdir(ckpt_lib.checkpoint_dir(out)) and os.listdir(ckpt_lib.checkpoint_dir(out)):
    raise ValueError(f"--out={out} already holds a checkpoint; choose a new directory")
  raw_cfg = experiment.load_run_config(source).to_dict()
  exp = experiment.experiment_from_config(raw_cfg)
  old_layout = exp.model.block_types
  pos = check_positions(positions, len(old_layout), positions_text)
  if not os.path.isdir(ckpt_lib.checkpoint_dir(source)):
    raise ValueError(f"--from_workdir={source} has no checkpoints/ directory (has the run saved a step?)")
  try:
    params, loaded = ckpt_lib.load_params(source, _abstract_params(exp.model), step=step, return_step=True)
  except ckpt_lib.CheckpointError as e:
    msg = _strip(e)
    if "parameter" in msg:  # present but of another model
      msg = f"the checkpoint does not match {os.path.join(source, 'config.json')}'s model: {msg}"
    raise ckpt_lib.CheckpointError(msg) from None

  model = HybridLM(exp.model, rngs=nnx.Rngs(seed))
  nnx.update(model, params)
  new = insert_gdn_blocks(model, pos, rngs=nnx.Rngs(seed))
  ncfg = new.config
  cfg = new_run_config(raw_cfg, ncfg.block_types, ncfg.prelude, ncfg.coda, out)
  # The written config must rebuild exactly the model whose parameters are saved.
  exp_new = experiment.experiment_from_config(cfg)
  if exp_new.model != ncfg:
    raise AssertionError(f"the new run config builds {exp_new.model}, not the retrofitted {ncfg}")

  new_params = nnx.split(new, nnx.Param, ...)[1]
  meta = {"source": source, "source_step": int(loaded), "source_layout": ",".join(old_layout),
          "source_plain_transformer": exp.plain_transformer, "layout": ",".join(ncfg.block_types),
          "positions": list(pos), "prelude": ncfg.prelude, "coda": ncfg.coda, "seed": int(seed)}
  write_run_dir(out, new_params, cfg, meta)

  # n_layers too: ignored beside a layout, but ModelConfig (and the run's recorded config) carries it.
  train_flags = [f"--config.model.layout={','.join(ncfg.block_types)}", f"--config.model.n_layers={ncfg.n_layers}"]
  src_model = raw_cfg["model"]
  for name in ("prelude", "coda"):
    if getattr(ncfg, name) != int(src_model.get(name) or 0):
      train_flags.append(f"--config.model.{name}={getattr(ncfg, name)}")
  if exp.plain_transformer:
    train_flags.append("--config.plain_transformer=False")
  train_flags.append(f"--config.train.init_from={out}")
  return Retrofitted(out=out, source=source, source_step=int(loaded), source_layout=old_layout,
                     source_plain_transformer=exp.plain_transformer, layout=ncfg.block_types, positions=pos,
                     prelude=ncfg.prelude, coda=ncfg.coda, flags=tuple(train_flags))


def hf_run_config(model_config, task: str, task_preset: str, hf_path: str, init_from: str) -> dict:
  """A run config (``config.json`` dict) training ``model_config`` (an imported model) on ``task``.

  Every ``ModelConfig`` field is written out (the imported block options
  included), the task's window and eviction apply, ``N = 1``; ``pretrained``
  records the Hugging Face directory and lets the model's vocabulary exceed
  the task's.
  """
  from launch.configs import common

  cfg = run_config.to_json_dict(common.base_config(task, task_preset))
  m = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)}
  m["layout"] = ",".join(model_config.block_types)
  cfg["model"].update(json.loads(json.dumps(m, default=list)))
  cfg["pretrained"] = hf_path
  cfg["train"]["init_from"] = init_from
  return cfg


def retrofit_hf(hf_path: str, out: str, *, task: str = "rule110", task_preset: str = "small",
                positions: Sequence[int] = (), seed: int = 0, positions_text: str | None = None) -> Retrofitted:
  """Imports a Hugging Face hybrid, optionally inserts GDN blocks, and writes a run directory ``out``.

  Args:
    hf_path: a Hugging Face model directory (see ``sleep_jax.load_pretrained``).
    out: the directory to write (must not hold a checkpoint yet).
    task: the registry name of the task the run trains on.
    task_preset: that task's preset.
    positions: GDN block indices in the new layout (empty: none inserted).
    seed: initialises inserted blocks' parameters other than the zeroed output projections.
    positions_text: the ``--insert`` text, for error messages.

  Returns:
    A :class:`Retrofitted` describing what was written (``source_step`` 0).

  Raises:
    ValueError: (one line) an unsupported or unreadable checkpoint, an unknown
      task, a vocabulary smaller than the task's, bad positions, or an ``out``
      that already holds a checkpoint.
  """
  import tasks
  from flax import nnx

  from sleep_jax import load_pretrained
  from sleep_jax.retrofit import insert_gdn_blocks
  from sleep_jax.train import checkpoint as ckpt_lib

  hf_path = os.path.abspath(os.path.expanduser(hf_path))
  out = os.path.abspath(os.path.expanduser(out))
  if out == hf_path:
    raise ValueError("--out must be a new directory, not the Hugging Face model directory")
  if os.path.isdir(ckpt_lib.checkpoint_dir(out)) and os.listdir(ckpt_lib.checkpoint_dir(out)):
    raise ValueError(f"--out={out} already holds a checkpoint; choose a new directory")
  t = tasks.get_task(task)
  task_vocab = t.vocab_size(t.preset(task_preset))
  model = load_pretrained(hf_path)
  old_layout = model.config.block_types
  if model.config.vocab_size < task_vocab:
    raise ValueError(f"--from_hf={hf_path}: the model's vocabulary ({model.config.vocab_size}) is smaller than "
                     f"task {task}'s ({task_vocab} token ids)")
  pos = check_positions(positions, len(old_layout), positions_text) if positions else ()
  new = insert_gdn_blocks(model, pos, rngs=nnx.Rngs(seed)) if pos else model
  ncfg = new.config
  cfg = hf_run_config(ncfg, task, task_preset, hf_path, out)
  exp_new = experiment.experiment_from_config(cfg)
  if exp_new.model != ncfg:
    raise AssertionError(f"the run config builds {exp_new.model}, not the imported {ncfg}")

  new_params = nnx.split(new, nnx.Param, ...)[1]
  meta = {"source": hf_path, "source_step": 0, "source_format": "huggingface", "source_layout": ",".join(old_layout),
          "source_plain_transformer": False, "layout": ",".join(ncfg.block_types), "positions": list(pos),
          "prelude": ncfg.prelude, "coda": ncfg.coda, "seed": int(seed), "task": task, "task_preset": task_preset}
  write_run_dir(out, new_params, cfg, meta)
  return Retrofitted(out=out, source=hf_path, source_step=0, source_layout=old_layout, source_plain_transformer=False,
                     layout=ncfg.block_types, positions=pos, prelude=ncfg.prelude, coda=ncfg.coda,
                     flags=(f"--config.train.init_from={out}",), source_format="huggingface")


def describe(r: Retrofitted) -> str:
  """The console report: the new layout and the ``launch.train`` commands."""
  c0, c1 = r.prelude, len(r.layout) - r.coda
  if r.source_format == "huggingface":
    inserted = (f"GDN blocks inserted at {','.join(map(str, r.positions))}, outputs zero-initialised"
                if r.positions else "no blocks inserted")
    return "\n".join([
        f"source: {r.source} (Hugging Face): {','.join(r.source_layout)}",
        f"layout: {','.join(r.layout)} ({inserted}; looped core: blocks {c0}..{c1 - 1})",
        f"wrote {r.out} (checkpoints/0, config.json, {CONFIG_PY}, {RETROFIT_JSON})",
        "train it (add --config.sleep.n_passes=N to sleep; the parameters do not depend on N):",
        f"  python -m launch.train --config={r.config_file} --workdir=<new run dir>",
        f"the imported model before training: python -m launch.eval --workdir={r.out}",
    ])
  kind = "plain transformer over the whole sequence" if r.source_plain_transformer else "windowed"
  outside = [p for p in r.positions if not c0 <= p < c1]
  note = []
  if outside:  # insert_gdn_blocks keeps the old prelude / coda; blocks beyond them join those
    note = [f"note: GDN block(s) at {','.join(map(str, outside))} lie outside the looped core (prelude / coda): "
            "sleep passes do not run them"]
  return "\n".join([
      f"source: {r.source} step {r.source_step}: {','.join(r.source_layout)} ({kind})",
      f"new layout: {','.join(r.layout)} (GDN blocks inserted at {','.join(map(str, r.positions))}, "
      f"outputs zero-initialised; looped core: blocks {c0}..{c1 - 1})",
      *note,
      f"wrote {r.out} (checkpoints/0, config.json, {CONFIG_PY}, {RETROFIT_JSON})",
      "train it (add --config.sleep.n_passes=N to sleep; the parameters do not depend on N):",
      f"  python -m launch.train --config={r.config_file} --workdir=<new run dir>",
      "or add to the source run's own launch.train command (its --config file and flags, a new --workdir):",
      f"  {' '.join(r.flags)}",
      f"the retrofitted model before training: python -m launch.eval --workdir={r.out}",
  ])


def define_flags() -> None:
  """The command-line flags (defined by the entry point only, so importing this module defines none)."""
  cli.define_path("from_workdir", None, "The trained run's directory (config.json and checkpoints/).")
  cli.define_path("from_hf", None, "A Hugging Face model directory (config.json and *.safetensors) to import "
                  "instead of a run (sleep_jax.load_pretrained).")
  flags.DEFINE_string("task", "rule110", "With --from_hf: the task the run directory trains on.")
  flags.DEFINE_string("task_preset", "small", "With --from_hf: the task's preset.")
  flags.DEFINE_string("insert", None, "GDN block positions in the NEW layout, e.g. 1,3 (optional with --from_hf).")
  cli.define_path("out", None, "Directory to write the retrofitted checkpoint and config to.")
  flags.DEFINE_integer("step", None, "Source checkpoint step (default: the newest that restores).")
  flags.DEFINE_integer("seed", 0, "Initialises the new blocks' parameters (their output projections are zero).")


def run(from_workdir: str, insert: str, out: str, *, step: int | None = None, seed: int = 0) -> int:
  """The command without absl: retrofits, prints the report (or a one-line ``error:``); returns the exit status."""
  try:
    result = retrofit_run(from_workdir, parse_positions(insert), out, step=step, seed=seed, positions_text=insert)
  except ValueError as e:  # CheckpointError is one
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(describe(result))
  return 0


def run_hf(from_hf: str, out: str, *, task: str = "rule110", task_preset: str = "small", insert: str | None = None,
           seed: int = 0) -> int:
  """``--from_hf`` without absl: imports, prints the report (or a one-line ``error:``); returns the exit status."""
  try:
    positions = parse_positions(insert) if insert else ()
    result = retrofit_hf(from_hf, out, task=task, task_preset=task_preset, positions=positions, seed=seed,
                         positions_text=insert)
  except ValueError as e:  # PretrainedError and CheckpointError are ones
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(describe(result))
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  if fv.from_hf:
    if fv.from_workdir:
      raise app.UsageError("give one source: --from_workdir or --from_hf")
    if not fv.out:
      raise app.UsageError("--out is required, e.g. --from_hf=~/models/hybrid --out=/tmp/hf_run")
    cli.setup_compilation_cache()
    cli.quiet_logging()
    return run_hf(fv.from_hf, fv.out, task=fv.task, task_preset=fv.task_preset, insert=fv.insert, seed=fv.seed)
  for name in ("from_workdir", "insert", "out"):
    if not fv[name].value:
      raise app.UsageError(f"--{name} is required, e.g. --from_workdir=/tmp/run --insert=1,3 --out=/tmp/run_gdn")
  cli.setup_compilation_cache()
  cli.quiet_logging()
  return run(fv.from_workdir, fv.insert, fv.out, step=fv.step, seed=fv.seed)


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
