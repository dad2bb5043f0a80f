"""launch/: one-step smoke runs per task, config conversion, bad configs and flags, plots, sweep table."""
import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import tasks
from launch import experiment, tables
from launch_helpers import fast_compile_env, parse_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.d_model=16", "--config.model.n_layers=2", "--config.model.n_heads=1",
        "--config.model.head_dim=16", "--config.model.gdn_head_dim=16", "--config.train.num_steps=1",
        "--config.train.batch_size=2", "--config.train.eval_batches=1", "--config.train.progress=False",
        "--config.train.log_every=1"]


def _config(name):
  return importlib.import_module(f"launch.configs.{name}").get_config()


def _tiny(cfg):
  cfg.model.update(d_model=16, n_layers=2, n_heads=1, head_dim=16, gdn_head_dim=16)
  cfg.train.update(num_steps=1, batch_size=4, eval_batches=1, progress=False, log_every=1)  # 4 fake devices
  return cfg


def _launch(module, *args, timeout=600):
  env = fast_compile_env(dict(os.environ, JAX_PLATFORMS="cpu"), keep_xla_flags=False)  # no fake devices
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_train_cli_one_step_rule110_then_eval(tmp_path):
  # Two steps (the first-step time is reported when the second batch is drawn),
  # then launch.eval at N = 2 with --config.* and at N = 1, 2 in one call. At
  # the trained N = 1 the evaluation must reproduce the training run's own
  # final evaluation of the same checkpoint; at N = 2 both eval calls agree.
  wd = str(tmp_path / "run")
  steps2 = [a for a in TINY if "num_steps" not in a] + ["--config.train.num_steps=2"]
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={wd}", *steps2)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "accuracy" in p.stdout and "majority" in p.stdout and "time to first step" in p.stdout
  records = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert records[0]["kind"] == "train" and records[0]["step"] == 1
  assert "sleep/relative_cost" in records[0] and "train/accuracy" in records[0]
  ev = json.load(open(os.path.join(wd, "eval.json")))
  assert 0.0 <= ev["accuracy"] <= 1.0 and any(k.startswith("accuracy/depth=") for k in ev)
  out = str(tmp_path / "e.json")
  p = _launch("launch.eval", f"--workdir={wd}", "--eval_batches=1", "--config.sleep.n_passes=2", f"--output={out}")
  assert p.returncode == 0, p.stderr[-3000:]
  single = json.load(open(out))
  assert single["step"] == 2 and single["overrides"] == ["sleep.n_passes=2"]
  p = _launch("launch.eval", f"--workdir={wd}", "--eval_batches=1", "--n_passes=1,2", "--override=train.seed=0")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "N=1" in p.stdout and "N=2" in p.stdout and "majority" in p.stdout
  sweep = json.load(open(os.path.join(wd, "eval_n_passes.json")))
  assert sweep["step"] == 2 and sweep["n_passes"] == [1, 2] and sweep["trained_n_passes"] == 1
  assert os.path.getsize(os.path.join(wd, "eval_n_passes.png")) > 0
  for got, want in ((sweep["results"]["1"], ev), (sweep["results"]["2"], single)):
    keys = [k for k in want if k.split("/")[0] in ("accuracy", "count", "majority", "chance")]
    assert keys and {k: got[k] for k in keys} == {k: want[k] for k in keys}
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  # Adaptive sleep at two tolerances beside fixed N = 2, 3 (cap 3): halt_tol = 0 never
  # halts (= fixed N = 3), a huge one halts after one sleep pass (= fixed N = 2).
  p = _launch("launch.eval", f"--workdir={wd}", "--eval_batches=1", "--halt_tol=0,1e9", "--n_passes=2,3",
              "--config.sleep.max_passes=3")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "tol=0" in p.stdout and "tol=1e+09" in p.stdout and "acc/passes" in p.stdout
  halting = json.load(open(os.path.join(wd, "eval_halting.json")))
  assert halting["max_passes"] == 3 and os.path.getsize(os.path.join(wd, "eval_halting.png")) > 0
  for tol, n in (("0.0", "3"), ("1000000000.0", "2")):
    got, want = halting["adaptive"][tol], halting["fixed"][n]
    assert got["sleep/passes"] == want["sleep/passes"] == float(n)
    keys = [k for k in want if k.split("/")[0] in ("accuracy", "count")]
    assert keys and {k: got[k] for k in keys} == {k: want[k] for k in keys}
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
  p = _launch("launch.eval", f"--workdir={wd}", "--eval_batches=1", "--halt_tol=-1")
  assert p.returncode == 1 and "--halt_tol entries must be >= 0" in p.stderr
  # A workdir that is not a run, with a --config change: the missing config.json is the error, not absl's
  # complaint that the (then empty) config has no field "sleep".
  p = _launch("launch.eval", f"--workdir={tmp_path / 'nope'}", "--config.sleep.max_passes=8")
  assert p.returncode == 1 and "has no config.json" in p.stderr and "no field" not in p.stderr, p.stderr


@pytest.mark.parametrize("name", ["depo_small", "gsm_math_small"])
def test_one_step_other_tasks(tmp_path, name):
  # In-process (no absl); the CLI path is covered by the rule110 test above.
  result = experiment.run(_tiny(_config(name)), str(tmp_path))
  assert result.step == 1 and 0.0 <= result.eval["accuracy"] <= 1.0


# Each recipe config against RESULTS.md's runs of it (the run directory whose committed config it must match).
SLEEP_LONGER_RUNS = {"rule110_sleep_longer": "floor_s0", "rule110_sleep_longer_progressive": "prog_s0"}


@pytest.mark.parametrize("name", ["rule110_sleep_longer", "rule110_sleep_longer_progressive",
                                  "rule110_sleep_longer_combined"])
def test_rule110_sleep_longer_trains_one_step(tmp_path, name):
  # The recipe configs against the demo's: same task, tokens and eval set; one step trains with their options.
  cfg, demo = _config(name), _config("rule110_sleep_demo")
  assert (cfg.task, cfg.task_preset, cfg.task_config.to_dict(), cfg.train.to_dict()) == (
      demo.task, demo.task_preset, demo.task_config.to_dict(), demo.train.to_dict())
  exp = experiment.experiment_from_config(cfg)
  if name.endswith("combined"):
    assert exp.sleep.n_passes == 4 and exp.sleep.detach_passes_train == 2
    assert exp.sleep.n_passes_train_mean == 4.0 and exp.sleep.grad_passes == 3
    assert exp.model.sleep_reinject == "embedding" and exp.sleep.halt_measure == "kl"
  else:  # what RESULTS.md's runs of the recipe trained with
    with open(os.path.join(REPO, "results", "rule110_sleep_longer", SLEEP_LONGER_RUNS[name], "config.json")) as f:
      ran = json.load(f)
    trained = experiment.experiment_from_config(ran)
    assert (trained.sleep, trained.model, trained.task_config) == (exp.sleep, exp.model, exp.task_config)
    assert exp.sleep.n_passes_train_mean is None and exp.model.sleep_reinject == "none"
    if name == "rule110_sleep_longer":  # the floor draw of N
      assert exp.sleep.n_passes_train == (4, 5, 6, 7, 8) and exp.sleep.n_passes == 6
    else:
      assert exp.sleep.n_passes == 4 and exp.sleep.detach_passes_train == 2
  result = experiment.run(_tiny(cfg), str(tmp_path))
  assert result.step == 1 and 0.0 <= result.eval["accuracy"] <= 1.0


CONFIG_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "launch", "configs"))
                      if f.endswith(".py") and f != "common.py")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_converts(name):
  exp = experiment.experiment_from_config(_config(name))
  assert exp.sleep.window == exp.task.window(exp.task_config)
  assert exp.train.batch_size >= 1 and exp.model.vocab_size == exp.task.vocab_size(exp.task_config)
  if name.endswith("paper"):
    assert exp.train.optimizer.kind == "muon_adamw"
    assert (exp.train.optimizer.lr, exp.train.optimizer.adamw_lr) == (2e-3, 5e-5)


def test_plain_transformer_sees_whole_sequence():
  cfg = _config("rule110_small")
  cfg.plain_transformer = True
  cfg.sleep.n_passes = 4
  exp = experiment.experiment_from_config(cfg)
  assert set(exp.model.block_types) == {"attn"} and len(exp.model.block_types) == cfg.model.n_layers
  assert exp.sleep.n_passes == 1 and exp.sleep.window == exp.task.seq_len(exp.task_config)
  # The baseline declares window = T itself; the task's own L given explicitly is not an override.
  cfg.sleep.window = 16
  assert experiment.experiment_from_config(cfg).sleep.window == exp.task.seq_len(exp.task_config) == 17
  cfg.sleep.window = 17
  with pytest.raises(ValueError, match="config.sleep.window=17"):
    experiment.experiment_from_config(cfg)


# The task fields each config file sets over its preset (written out: the reference).
FILE_TASK_FIELDS = {"rule110_small": dict(n_states=1, t_min=1, t_max=6),
                    "depo_small": dict(n_min=7, n_max=8, pool_size=16, context_len=32, window=32, n_queries=5,
                                       k_max=2, eval_ks=(1, 2), answers_visible=False,
                                       query_sources="shared"),
                    "gsm_math_small": dict(op_max=2, operators=("+",), modulus=5, line_order="topological",
                                           seq_len=64, min_len=56, window=32, n_vars=32, line_values=True,
                                           distractor_reads="constants")}
PRESET_CASES = [(f"{task}_{scale}", preset) for task in tasks.list_tasks() for scale in ("small", "paper")
                for preset in tasks.get_task(task).presets]


def _parse_config(name, *args):
  """The config ``launch.train`` gets from ``--config=launch/configs/<name>.py <args>``."""
  return parse_config_file(f"launch/configs/{name}.py", *args)


@pytest.mark.parametrize("name,preset", PRESET_CASES)
def test_task_preset_selects_the_preset_with_only_set_fields_over_it(name, preset):
  cfg = _parse_config(name, f"--config.task_preset={preset}", "--config.task_config.num_eval_examples=77")
  if (name, preset) == ("gsm_math_small", "paper_sliding"):
    # The file's two windows of 32 under sliding eviction keep the question in the cache: refused, and said so.
    with pytest.raises(ValueError, match=r"question can occupy positions .* reach the attention cache .*\(sliding eviction"):
      experiment.experiment_from_config(cfg)
    return
  exp = experiment.experiment_from_config(cfg)
  task = tasks.get_task(cfg.task)
  want = dataclasses.replace(task.preset(preset), **FILE_TASK_FIELDS.get(name, {}), num_eval_examples=77)
  assert exp.task_config == want
  assert (exp.sleep.window, exp.sleep.eviction) == (task.window(want), task.eviction(want))
  # config.json round trip (what launch.eval rebuilds the run from) gives the same experiment.
  again = experiment.experiment_from_config(json.loads(json.dumps(cfg.to_dict(), default=list)))
  assert again == exp


def test_task_preset_examples_from_the_paper_configs():
  exp = experiment.experiment_from_config(_parse_config("rule110_paper", "--config.task_preset=paper_depth"))
  assert (exp.task_config.t_min, exp.task_config.t_max, exp.task_config.width) == (4, 16, 24)
  exp = experiment.experiment_from_config(_parse_config("gsm_math_paper", "--config.task_preset=paper_sliding"))
  assert (exp.task_config.window, exp.task_config.eviction) == (512, "sliding")
  assert (exp.sleep.window, exp.sleep.eviction) == (512, "sliding")
  # A tuple field parses as a tuple; a set field survives a preset change.
  exp = experiment.experiment_from_config(_parse_config("depo_paper", "--config.task_preset=small",
                                                        "--config.task_config.eval_ks=(1,2)"))
  assert exp.task_config == dataclasses.replace(tasks.get_task("depo").preset("small"), eval_ks=(1, 2))


def test_load_run_config_reads_new_and_old_config_json(tmp_path):
  cfg = _parse_config("depo_small", "--config.task_config.eval_ks=(1,2)", "--config.sleep.n_passes=3")
  with open(tmp_path / "config.json", "w") as f:
    json.dump(cfg.to_dict(), f, default=list)
  loaded = experiment.load_run_config(str(tmp_path))
  assert experiment.experiment_from_config(loaded) == experiment.experiment_from_config(cfg)
  assert loaded.task_config.eval_ks == (1, 2) and loaded.task_config.n_sampling is None
  loaded.task_config.n_sampling = "uniform"  # an unset field is typed again, as --config.task_config.n_sampling=... needs
  with pytest.raises(TypeError):
    loaded.task_config.n_sampling = 4
  assert loaded.sleep.grad_passes is None and loaded.train.profile_steps is None  # so are the library's
  loaded.sleep.grad_passes = 2
  with pytest.raises(TypeError):
    loaded.sleep.grad_passes = "two"
  # A config.json that spelled out the whole preset (older runs) keeps meaning that preset.
  old = cfg.to_dict()
  old["task_config"] = dataclasses.asdict(tasks.get_task("depo").preset("small"))
  with open(tmp_path / "config.json", "w") as f:
    json.dump(old, f, default=list)
  exp = experiment.experiment_from_config(experiment.load_run_config(str(tmp_path)))
  assert exp.task_config == tasks.get_task("depo").preset("small")


@pytest.mark.parametrize("name,args,match", [
    ("rule110_small", ["--config.sleep.window=20"],
     r"^config.sleep.window=20 splits a Rule 110 state .* task rule110 defines L=16: "),
    ("depo_small", ["--config.sleep.window=64"], r"^config.sleep.window=64 moves edges .* defines L=32: "),
    ("gsm_math_small", ["--config.sleep.window=16"], r"^config.sleep.window=16 can leave the question .*L=32"),
    ("rule110_small", ["--config.sleep.eviction=sliding"],
     r"^config.sleep.eviction='sliding': sliding eviction lets the prediction window attend .* "
     r"task rule110 defines 'hard' eviction only"),
    ("depo_small", ["--config.sleep.eviction=sliding"], r"task depo defines 'hard' eviction only"),
    ("gsm_math_small", ["--config.sleep.eviction=sliding"],
     r"task gsm_math defines 'hard' eviction: .* or change --config.task_config.eviction"),
    ("gsm_math_paper", ["--config.task_preset=paper_sliding", "--config.sleep.eviction=hard"],
     r"^config.sleep.eviction='hard': .* task gsm_math defines 'sliding' eviction"),
    ("gsm_math_paper", ["--config.task_preset=paper_sliding", "--config.sleep.window=2000"], r"L=512"),
])
def test_overrides_that_change_the_task_are_refused(name, args, match, tmp_path):
  cfg = _parse_config(name, *args)
  with pytest.raises(ValueError, match=match) as e:
    experiment.experiment_from_config(cfg)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match=match):  # the path of launch.sweep
    experiment.run(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("name,args", [
    ("rule110_small", ["--config.sleep.window=16", "--config.sleep.eviction=hard"]),
    ("gsm_math_paper", ["--config.task_preset=paper_sliding", "--config.sleep.eviction=sliding",
                        "--config.sleep.window=512"]),
    ("gsm_math_small", ["--config.task_config.eviction=sliding", "--config.task_config.window=16"]),
])
def test_sleep_settings_equal_to_the_task_are_accepted(name, args):
  exp = experiment.experiment_from_config(_parse_config(name, *args))
  assert (exp.sleep.window, exp.sleep.eviction) == (exp.task.window(exp.task_config),
                                                    exp.task.eviction(exp.task_config))


@pytest.mark.parametrize("section,field,value,match", [
    (None, "task", "nope", "unknown task 'nope'"),
    ("sleep", "n_passes", -1, "n_passes"),
    ("train", "batch_size", 0, "batch_size"),
    ("optimizer", "kind", "sgd", "OptimizerConfig.kind"),
    ("task_config", "t_min", -3, "t_min"),
])
def test_bad_config_values(section, field, value, match):
  cfg = _config("rule110_small")
  target = cfg if section is None else cfg[section]
  with cfg.unlocked():
    setattr(target, field, value)
  with pytest.raises(ValueError, match=match):
    experiment.experiment_from_config(cfg)


def test_unknown_config_field():
  d = _config("rule110_small").to_dict()
  d["model"]["bogus"] = 1
  with pytest.raises(ValueError, match=r"config.model has unknown field\(s\) \['bogus'\]"):
    experiment.experiment_from_config(d)


# One command-line value per field of the library's config dataclasses, all different from what
# rule110_small resolves to: (value as typed, resolved value, other flags it needs). TASK: the field
# comes from the task, which an explicit equal value must not change.
TASK = object()
FIELD_OVERRIDES = {
    "model": {
        "vocab_size": (TASK, TASK, ()), "d_model": ("48", 48, ()), "n_layers": ("6", 6, ()),
        "layout": ("attn,gdn,gdn", ("attn", "gdn", "gdn"), ()), "n_heads": ("3", 3, ()),
        "head_dim": ("16", 16, ()), "gdn_n_heads": ("3", 3, ()), "gdn_head_dim": ("16", 16, ()),
        "gdn_value_dim": ("24", 24, ()), "conv_size": ("3", 3, ()), "mlp_hidden": ("128", 128, ()),
        "rope_theta": ("500", 500.0, ()), "norm_eps": ("1e-5", 1e-5, ()), "embed_init_std": ("0.5", 0.5, ()),
        "prelude": ("1", 1, ()), "coda": ("1", 1, ()), "tie_embeddings": ("True", True, ()),
        "dtype": ("bfloat16", "bfloat16", ()), "gdn_impl": ("reference", "reference", ()),
        "gdn_chunk_size": ("32", 32, ()), "gdn_decay_init": ("(0.05,0.5)", (0.05, 0.5), ()),
        "n_kv_heads": ("1", 1, ()), "attn_output_gate": ("True", True, ()), "attn_qk_norm": ("True", True, ()),
        "rope_fraction": ("0.5", 0.5, ()), "norm_zero_centered": ("True", True, ()),
        "gdn_n_key_heads": ("1", 1, ()),
        "sleep_reinject": ("wake", "wake", ()), "canon_size": ("4", 4, ()),
    },
    "sleep": {
        "window": (TASK, TASK, ()), "n_passes": ("3", 3, ()), "eviction": (TASK, TASK, ()),
        "remat_passes": ("True", True, ()), "remat_windows": ("True", True, ()), "grad_passes": ("2", 2, ()),
        "replay": ("True", True, ()), "n_passes_train": ("(1,2)", (1, 2), ()),
        "n_passes_train_weights": ("(1.0,3.0)", (1.0, 3.0), ("--config.sleep.n_passes_train=(1,2)",)),
        "halt_tol": ("0.01", 0.01, ("--config.sleep.max_passes=4",)), "max_passes": ("4", 4, ("--config.sleep.halt_tol=0.01",)),
        "unroll": ("False", False, ()), "fuse_unslept": ("False", False, ()),
        "n_passes_train_mean": ("3.5", 3.5, ("--config.sleep.n_passes_train_max=8",)),
        "n_passes_train_sigma": ("1.0", 1.0, ("--config.sleep.n_passes_train_mean=3.5",
                                              "--config.sleep.n_passes_train_max=8")),
        "n_passes_train_max": ("8", 8, ("--config.sleep.n_passes_train_mean=3.5",)),
        "detach_passes_train": ("2", 2, ()),
        "halt_measure": ("kl", "kl", ()),
    },
    "train": {
        "num_steps": ("7", 7, ()), "batch_size": ("6", 6, ()), "seed": ("3", 3, ()), "eval_seed": ("5", 5, ()),
        "log_every": ("5", 5, ()),
        "eval_every": ("10", 10, ()), "eval_batches": ("2", 2, ()), "checkpoint_every": ("20", 20, ()),
        "max_to_keep": ("2", 2, ()), "sync_every": ("4", 4, ()), "num_devices": ("1", 1, ()),
        "data_workers": ("1", 1, ()), "init_from": ("/tmp/a_run", "/tmp/a_run", ()),
        "progress": ("False", False, ()), "profile_steps": ("2,4", (2, 4), ()), "fsdp": ("True", True, ()),
    },
    "optimizer": {
        "kind": ("muon_adamw", "muon_adamw", ()), "lr": ("0.002", 0.002, ()), "adamw_lr": ("1e-4", 1e-4, ()),
        "schedule": ("linear", "linear", ()), "warmup_steps": ("7", 7, ()), "decay_steps": ("50", 50, ()),
        "min_lr_ratio": ("0.1", 0.1, ()), "restarts": ("(5,)", (5,), ()), "clip_norm": ("0.5", 0.5, ()),
        "weight_decay": ("0.01", 0.01, ()),
        "b1": ("0.8", 0.8, ()), "b2": ("0.9", 0.9, ()), "eps": ("1e-6", 1e-6, ()), "muon_beta": ("0.9", 0.9, ()),
        "muon_ns_steps": ("3", 3, ()), "adamw_patterns": ("('embed','norm')", ("embed", "norm"), ()),
    },
}


def _resolved(exp, section):
  return exp.train.optimizer if section == "optimizer" else getattr(exp, section)


def test_field_overrides_cover_every_dataclass_field():
  from sleep_jax.config import ModelConfig, SleepConfig
  from sleep_jax.train.config import OptimizerConfig, TrainConfig
  for section, cls in (("model", ModelConfig), ("sleep", SleepConfig), ("train", TrainConfig),
                       ("optimizer", OptimizerConfig)):
    fields = {f.name for f in dataclasses.fields(cls)} - {"optimizer"}  # TrainConfig.optimizer: its own section
    assert set(FIELD_OVERRIDES[section]) == fields, f"add the new {cls.__name__} fields to FIELD_OVERRIDES"
    # One set of defaults: the launch section holds the dataclass's fields and nothing else.
    assert set(_config("rule110_small")[section]) == fields


@pytest.mark.parametrize("section,field", [(s, f) for s in FIELD_OVERRIDES for f in FIELD_OVERRIDES[s]])
def test_every_dataclass_field_overrides_from_the_command_line(section, field):
  value, want, extra = FIELD_OVERRIDES[section][field]
  default = experiment.experiment_from_config(_config("rule110_small"))
  if value is TASK:  # the task's own value, given explicitly, is accepted and changes nothing
    want = getattr(_resolved(default, section), field)
    value = str(want)
  else:
    assert getattr(_resolved(default, section), field) != want  # or the override would prove nothing
  exp = experiment.experiment_from_config(_parse_config("rule110_small", f"--config.{section}.{field}={value}",
                                                        *extra))
  assert getattr(_resolved(exp, section), field) == want


def test_task_defined_vocab_size_is_refused_when_it_differs():
  with pytest.raises(ValueError, match=r"^config.model.vocab_size=99: task rule110's tokenizer has \d+ token ids"):
    experiment.experiment_from_config(_parse_config("rule110_small", "--config.model.vocab_size=99"))


def _typed_fields():
  cfg = _config("rule110_small")
  for section in FIELD_OVERRIDES:
    for field in cfg[section]:
      kind = cfg[section].get_type(field)
      if kind in (int, float, bool):
        yield section, field, kind.__name__


@pytest.mark.parametrize("section,field,kind", list(_typed_fields()))
def test_a_value_of_the_wrong_type_is_one_line_naming_the_field(section, field, kind, capsys):
  from launch import cli
  arg = f"--config.{section}.{field}=x!"
  argv = ["prog", "--config=launch/configs/rule110_small.py", arg]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, flag_values=fv)
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {arg}: config.{section}.{field} takes {kind} values ("), err


@pytest.mark.parametrize("arg,want", [
    ("--config.model.d_modle=64",
     "error: --config.model.d_modle: the config has no field 'd_modle'; did you mean \"d_model\""),
    ("--config.sleep.n_pases=2", "error: --config.sleep.n_pases: the config has no field 'n_pases'"),
    ("--config.trian.seed=1", "error: --config.trian.seed: the config has no field 'trian'"),
])
def test_a_misspelled_field_is_one_line_naming_it(arg, want, capsys):
  from launch import cli
  argv = ["prog", "--config=launch/configs/rule110_small.py", arg]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  with pytest.raises(SystemExit) as e:
    cli.parse_flags(argv, flag_values=fv)
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(want), err


OLD_CONFIG_JSON = os.path.join(REPO, "tests", "data", "config_json_before_placeholders")
# The config files that existed before the placeholders (later ones never wrote the old spellings).
OLD_CONFIG_FILES = [n for n in CONFIG_FILES if os.path.exists(os.path.join(OLD_CONFIG_JSON, f"{n}.json"))]


def test_the_old_config_json_cases_are_there():
  assert {"rule110_small", "rule110_sleep_demo", "rule110_paper", "depo_small", "depo_paper", "gsm_math_small",
          "gsm_math_paper"} <= set(OLD_CONFIG_FILES)


@pytest.mark.parametrize("name", OLD_CONFIG_FILES)
def test_config_json_from_before_the_placeholders_still_resolves_to_its_config_file(name, tmp_path):
  # tests/data/config_json_before_placeholders/<name>.json is what launch.train recorded for each config
  # file while the launch config held its own defaults with 0 / "" for "unset". Such a run directory must
  # still load (launch.eval, launch.retrofit), and the config file must still resolve to what it did then
  # (the defaults now come from the library's dataclasses). A config file changed on purpose: change the
  # same field in its JSON here.
  with open(os.path.join(OLD_CONFIG_JSON, f"{name}.json")) as f:
    old = json.load(f)
  assert old["sleep"]["window"] == 0 and old["model"]["layout"] == ""  # the old spelling of "unset"
  want = experiment.experiment_from_config(_config(name))
  assert experiment.experiment_from_config(old) == want
  with open(tmp_path / "config.json", "w") as f:
    json.dump(old, f)
  loaded = experiment.load_run_config(str(tmp_path))
  assert experiment.experiment_from_config(loaded) == want
  assert experiment.experiment_from_config(json.loads(json.dumps(loaded.to_dict(), default=list))) == want


def test_bad_flags_exit_with_clear_errors(tmp_path):
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={tmp_path}",
              "--config.sleep.n_passes=-1")
  assert p.returncode == 1 and "n_passes" in p.stderr and "Traceback" not in p.stderr
  # JAX's own flags (launch/cli.py), and the deprecated spelling of this one.
  for devices in ("--jax_num_cpu_devices=4", "--cpu_devices=4"):
    p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={tmp_path}", devices,
                "--config.train.batch_size=6")
    assert p.returncode == 1 and "not divisible by the 4 devices" in p.stderr, p.stderr[-2000:]
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py")
  assert p.returncode != 0 and "--workdir is required" in p.stderr
  # An override that changes the task: one line, no traceback.
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={tmp_path}",
              "--config.sleep.window=20")
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  errors = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert errors == [l for l in p.stderr.splitlines() if "sleep.window" in l]
  assert errors[0].startswith("error: config.sleep.window=20 splits a Rule 110 state") and "L=16" in errors[0]
  p = _launch("launch.train", "--config=launch/configs/rule110_small.py", f"--workdir={tmp_path}",
              "--config.sleep.bogus=1")
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  assert "error: --config.sleep.bogus: the config has no field 'bogus'" in p.stderr


def test_overrides_parse_and_reject():
  cfg = {"sleep": {"n_passes": 1}, "task_config": {"t_max": 8}}
  experiment.apply_overrides(cfg, ["sleep.n_passes=4", "task_config.t_max=16"])
  assert cfg == {"sleep": {"n_passes": 4}, "task_config": {"t_max": 16}}
  with pytest.raises(ValueError, match="no config field 'nope'"):
    experiment.apply_overrides(cfg, ["sleep.nope=1"])
  with pytest.raises(ValueError, match="key.path=value"):
    experiment.apply_overrides(cfg, ["sleep.n_passes"])


def _raw_state(workdir, step):
  import orbax.checkpoint as ocp
  from sleep_jax.train import checkpoint as ckpt_lib
  mngr = ocp.CheckpointManager(ckpt_lib.checkpoint_dir(workdir))
  raw = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                   data=ocp.args.JsonRestore()))
  return raw["state"], raw["data"]


@pytest.mark.slow
def test_cli_resume_in_a_new_process_is_bit_exact(tmp_path):
  # Process-level resume: a run that exits after 2 steps and is started again must
  # end with exactly the state (params, optimizer, step) and data-iterator position
  # of a run that went 4 steps straight. decay_steps is pinned: by default the
  # schedule spans num_steps, which is what the early stop changes.
  base = ["--config=launch/configs/rule110_small.py", *[a for a in TINY if "num_steps" not in a],
          "--config.train.checkpoint_every=2", "--config.optimizer.decay_steps=4"]
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  for wd, steps in ((straight, 4), (resumed, 2), (resumed, 4)):
    p = _launch("launch.train", f"--workdir={wd}", *base, f"--config.train.num_steps={steps}")
    assert p.returncode == 0, p.stderr[-3000:]
  s_state, s_data = _raw_state(straight, 4)
  r_state, r_data = _raw_state(resumed, 4)
  assert s_data == r_data
  s_leaves, s_def = jax_tree_flatten(s_state)
  r_leaves, r_def = jax_tree_flatten(r_state)
  assert s_def == r_def
  for a, b in zip(s_leaves, r_leaves):
    np.testing.assert_array_equal(a, b)
  losses = lambda wd: [r["loss"] for r in map(json.loads, open(os.path.join(wd, "metrics.jsonl")))
                       if r.get("kind") == "train"]
  assert losses(straight)[2:] == losses(resumed)[2:]


def jax_tree_flatten(tree):
  import jax
  return jax.tree.flatten(tree)


def test_depth_table_prints_standard_error_and_baselines_and_tolerates_missing_keys():
  result = {"accuracy/depth=1": 0.9, "count/depth=1": 100, "majority/depth=1": 0.5, "chance/depth=1": 0.25,
            "loss/depth=1": 0.125, "accuracy/depth=3": 0.5, "count/depth=3": 4, "loss/depth=3": float("nan"),
            "accuracy": 0.8846, "majority": 0.5, "loss": 0.25}
  want = [
      "     t   count  accuracy  ± s.e.  majority  chance     loss",
      "     1     100    0.9000  0.0300    0.5000  0.2500   0.1250",  # sqrt(.9 * .1 / 100) = .03
      "     3       4    0.5000  0.2500         -       -        -",  # sqrt(.5 * .5 / 4) = .25
      "   all     104    0.8846  0.0313    0.5000       -   0.2500",  # counts summed
  ]
  assert tables.depth_table(result, "t").splitlines() == want
  assert math.isclose(tables.standard_error(0.8846, 104), 0.031330, rel_tol=1e-4)  # sqrt(.8846 * .1154 / 104)
  assert tables.depth_table({}).splitlines()[1].split() == ["all", "-", "-", "-", "-", "-", "-"]
  assert experiment.depth_table is tables.depth_table  # the old import location still works


def test_passes_table_one_row_per_depth_one_column_per_n():
  r1 = {"accuracy/depth=2": 0.5, "count/depth=2": 10, "majority/depth=2": 0.6, "accuracy": 0.5, "majority": 0.6}
  r4 = {"accuracy/depth=2": 0.75, "accuracy/depth=5": 0.25, "accuracy": 0.625}
  assert tables.passes_table({1: r1, 4: r4}, "k").splitlines() == [
      "     k   count  majority  chance     N=1     N=4",
      "     2      10    0.6000       -  0.5000  0.7500",
      "     5       -         -       -       -  0.2500",
      "   all      10    0.6000       -  0.5000  0.6250",
  ]


def test_depth_answered_is_the_deepest_depth_with_every_shallower_one_halfway_above_majority():
  r = {"accuracy/depth=1": 0.99, "majority/depth=1": 0.1, "accuracy/depth=2": 0.56, "majority/depth=2": 0.1,
       "accuracy/depth=10": 0.3, "majority/depth=10": 0.1}
  assert tables.depth_answered(r) == 2  # 0.56 >= (1 + 0.1) / 2; 10 sorts after 2
  assert tables.depth_answered(dict(r, **{"accuracy/depth=10": 0.9})) == 10
  # 10 does not count past a gap at 2
  assert tables.depth_answered(dict(r, **{"accuracy/depth=2": 0.54, "accuracy/depth=10": 0.9})) == 1
  assert tables.depth_answered(dict(r, **{"accuracy/depth=1": 0.5})) is None
  assert tables.depth_answered(dict(r, **{"accuracy/depth=2": float("nan")})) == 1
  assert tables.depth_answered({"accuracy": 1.0}) is None


def test_depth_table_adds_mean_passes_when_the_result_has_them():
  result = {"accuracy/depth=1": 0.9, "count/depth=1": 100, "sleep/passes/depth=1": 2.5, "accuracy": 0.9,
            "sleep/passes": 2.5}
  lines = tables.depth_table(result, "t").splitlines()
  assert lines[0].split()[-1] == "passes" and lines[1].split()[-1] == "2.50" and lines[2].split()[-1] == "2.50"


def test_halting_table_one_column_per_setting_accuracy_over_passes():
  fixed = {"accuracy/depth=2": 0.5, "count/depth=2": 10, "majority/depth=2": 0.6, "accuracy": 0.5, "majority": 0.6,
           "sleep/passes/depth=2": 4.0, "sleep/passes": 4.0}
  adaptive = {"accuracy/depth=2": 0.75, "accuracy": 0.75, "sleep/passes/depth=2": 2.25, "sleep/passes": 2.25}
  assert tables.halting_table({"N=4": fixed, "tol=0.1": adaptive}, "t").splitlines() == [
      "     t   count  majority           N=4       tol=0.1",
      "                            acc/passes    acc/passes",
      "     2      10    0.6000   0.5000/4.00   0.7500/2.25",
      "   all      10    0.6000   0.5000/4.00   0.7500/2.25",
  ]


def test_compilation_cache_is_written_then_read_by_a_second_process(tmp_path):
  # The same jitted function in two fresh processes: the first stores its
  # executable, the second loads it (a cache hit) instead of compiling.
  script = textwrap.dedent("""
      import sys
      import jax
      from jax import monitoring
      from launch import cli
      hits = []
      monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
      assert cli.setup_compilation_cache(sys.argv[1], min_compile_time_secs=0) == sys.argv[1]
      jax.jit(lambda x: (x @ x.T).sum())(jax.numpy.ones((8, 8))).block_until_ready()
      print("hits", len(hits))
  """)
  cache = str(tmp_path / "cache")
  runs = [subprocess.run([sys.executable, "-c", script, cache], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu")) for _ in range(2)]
  assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
  hits = [int(r.stdout.split()[-1]) for r in runs]
  assert hits[0] == 0 and hits[1] >= 1, hits  # (jnp.ones is a jitted computation too)
  assert any(f.startswith("jit_") for f in os.listdir(cache))


def test_compilation_cache_dir_defaults_and_off(monkeypatch, tmp_path):
  from launch import cli
  monkeypatch.setenv(cli.ENV_VAR, str(tmp_path / "env"))
  assert cli.default_compilation_cache_dir() == str(tmp_path / "env")
  monkeypatch.setenv(cli.ENV_VAR, "")
  assert cli.default_compilation_cache_dir() == ""
  monkeypatch.delenv(cli.ENV_VAR)
  assert cli.default_compilation_cache_dir() == os.path.join("~", ".cache", "sleep_jax", "jax")
