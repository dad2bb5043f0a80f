"""The README's stated defaults against the code: the main job's paragraph and the library's signatures.

Each fact is parsed out of the README text and compared with what the code
does, so changing a default (or the README) without the other fails here.
The main job is the first ``launch.train`` command of the README, built into
the config ``launch.train`` would run (same flags, same parser).
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import shlex

import pytest

from launch import experiment
from launch_helpers import parse_config_file
from sleep_jax.config import ModelConfig
from sleep_jax.ops import gated_delta_rule
from sleep_jax.ops.gated_delta import api
from test_readme import README, readme_commands


@pytest.fixture(scope="module")
def text() -> str:
  with open(README) as f:
    return f.read()


def paragraph(text: str, start: str) -> str:
  """The README paragraph that begins with ``start``, its lines joined by spaces."""
  found = re.search(rf"^{re.escape(start)}.*?(?=\n\n)", text, re.S | re.M)
  assert found, f"no README paragraph starts with {start!r}"
  return " ".join(found.group(0).split())


def fact(pattern: str, text: str, what: str) -> tuple[str, ...]:
  found = re.search(pattern, text)
  assert found, f"the README no longer states {what} ({pattern!r})"
  return found.groups()


def main_job(text: str, *extra: str):
  """The ``Experiment`` of the README's main-job command (plus ``extra`` flags)."""
  command = next(c for c in readme_commands(text) if " launch.train " in f" {c} ")
  args = shlex.split(command)
  config_file = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
  overrides = [a for a in args if a.startswith("--config.")]
  return experiment.experiment_from_config(parse_config_file(config_file, *overrides, *extra))


def test_main_job_paragraph_states_the_configs_values(text):
  p = paragraph(text, "The main job trains")
  exp = main_job(text)
  (layers,) = fact(r"a (\d+)-layer", p, "the layer count")
  (width,) = fact(r"width-(\d+)", p, "the width")
  (bits,) = fact(r"one (\d+)-bit state", p, "the state width")
  t_min, t_max = fact(r"depth `t` in (\d+)\.\.(\d+)", p, "the depth range")
  (batch,) = fact(r"batch (\d+)", p, "the batch size")
  (steps,) = fact(r"(\d+) steps", p, "the step count")
  (n,) = fact(r"It runs at N = (\d+)", p, "the main job's N")
  assert (exp.model.n_layers, exp.model.d_model) == (int(layers), int(width))
  assert (exp.task_config.n_states, exp.task_config.width) == (1, int(bits))
  assert (exp.task_config.t_min, exp.task_config.t_max) == (int(t_min), int(t_max))
  assert (exp.train.batch_size, exp.train.num_steps) == (int(batch), int(steps))
  assert exp.sleep.n_passes == int(n) and exp.sleep.n_passes_train is None and not exp.sleep.adaptive
  if int(n) == 1:
    assert "never sleeps" in p


def test_the_one_flag_that_makes_the_main_job_sleep(text):
  p = paragraph(text, "The main job trains")
  (flag,) = fact(r"`(--config\.sleep\.n_passes=\d+)`", p, "the flag that makes the main job sleep")
  exp = main_job(text, flag)
  assert exp.sleep.n_passes == int(flag.split("=")[1]) > 1
  assert any(experiment.task_schedule(exp)), "no window of the main job's task sleeps"
  (after,) = fact(r"gets (\w+) passes after its wake pass", p, "the sleep passes the flag gives")
  words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
  assert words.get(after, after) == exp.sleep.n_sleep_passes


def test_gated_delta_rule_signature_in_the_readme_matches_the_code(text):
  flat = " ".join(text.split())
  (args,) = fact(r"`sleep_jax\.ops\.gated_delta_rule\(q, k, v, log_alpha, beta, \*, ([^)]*)\)`", flat,
                 "gated_delta_rule's signature")
  stated = {kw.arg: ast.literal_eval(kw.value) for kw in ast.parse(f"f({args})", mode="eval").body.keywords}
  params = inspect.signature(gated_delta_rule).parameters
  code = {name: params[name].default for name in stated}
  code = {k: (v.value if hasattr(v, "value") else v) for k, v in code.items()}  # an Impl default reads as its value
  assert stated == code
  assert "chunk_size" in stated
  if stated["chunk_size"] is None:
    (beyond,) = fact(r"`AUTO_TABLE_CPU` in `sleep_jax/ops/gated_delta/api\.py`, (\d+) beyond its longest row", flat,
                     "the chunk size beyond AUTO_TABLE_CPU")
    assert int(beyond) == api.LONG_CHUNK_CPU
    assert all(name == "chunked" for name, _ in api.AUTO_TABLE_CPU.values()), "README: chunked is the CPU default"


def test_gdn_chunk_size_default_and_its_cpu_caveat(text):
  flat = " ".join(text.split())
  (default,) = fact(r"`ModelConfig\.gdn_chunk_size` \(default (\d+)\) has no effect on CPU under the default "
                    r"`gdn_impl=\"auto\"`", flat, "gdn_chunk_size's default and its CPU caveat")
  fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  assert int(default) == fields["gdn_chunk_size"] and fields["gdn_impl"] == "auto"
  assert "gdn_impl=\"auto\"" in " ".join((ModelConfig.__doc__ or "").split())  # the docstring says so too
