"""The README's commands and its Python snippet, run exactly as written.

Every command line in the README's ``bash`` code blocks is extracted and run
from a temporary copy of the repository (its tracked files), in README order,
with the relative paths as written. Only budget overrides are appended (fewer
steps, one eval batch, ``--dry_run`` for the long sweeps, ``--quick`` for the
benchmarks); the exit code and the files the README says each command writes
are checked. Every command must match exactly one rule below, so a command
added to the README without a rule fails here.

The default suite runs the main job's chain (train, eval, eval at several N,
``init_from``, retrofit, plot), all on relative paths; the rest is slow.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
from launch_helpers import fast_compile_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

TRAIN_BUDGET = ("--config.train.num_steps=4", "--config.train.checkpoint_every=2", "--config.train.eval_batches=1",
                "--config.train.eval_every=0")
EVAL_BUDGET = ("--eval_batches=1",)
RUN_FILES = ("config.json", "metrics.jsonl", "eval.json", "checkpoints")


def readme_commands(text: str) -> list[str]:
  """The command lines of the ``bash`` blocks: continuations joined, comments and ``[optional]`` parts dropped."""
  commands = []
  for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
    joined = re.sub(r"\\\n", " ", block)
    for line in joined.splitlines():
      line = re.sub(r"\s\[--[^\]]*\]", "", line)  # `[--flag=v]`: optional, run without it
      tokens = shlex.split(line, comments=True)
      if tokens:
        commands.append(shlex.join(tokens))
  return commands


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one kind of README command runs here.

  Attributes:
    pattern: matches the command (``re.search``).
    append: budget overrides appended to the command.
    writes: what the README says it writes: ``(flag, relative names)`` pairs; the
      files are looked for under the value of ``--flag`` (or the repo root if
      ``flag`` is empty). Globs are allowed.
    skip: why the command is not run here ('' runs it).
    fast: part of the default suite.
  """
  pattern: str
  append: tuple[str, ...] = ()
  writes: tuple[tuple[str, tuple[str, ...]], ...] = ()
  skip: str = ""
  fast: bool = False


RULES = (
    Rule(r"^pip install", skip="installs the package: .ci/run runs exactly this on every CI checkout"),
    Rule(r"^python3 -m pytest", skip="the test suite itself"),
    Rule(r"launch\.train .*--workdir=workdirs/rule110_small(_n4)?( |$)", TRAIN_BUDGET,
         (("workdir", RUN_FILES),), fast=True),
    Rule(r"launch\.train ", TRAIN_BUDGET, (("workdir", RUN_FILES),)),
    # The Depo demo's sweep only plans here (--dry_run below), so the commands that read its runs do not run.
    Rule(r"launch\.(eval|depo_probe) --workdir=workdirs/depo_demo/",
         skip="reads the Depo demo sweep's runs, which the README chain only plans (--dry_run); "
              "tests/test_depo_probe.py covers the probe"),
    Rule(r"launch\.eval .*--halt_tol=", EVAL_BUDGET, (("workdir", ("eval_halting.json", "*.png")),)),
    Rule(r"launch\.eval --workdir=workdirs/rule110_small --n_passes=", EVAL_BUDGET,
         (("workdir", ("eval_n_passes.json", "*.png")),), fast=True),
    Rule(r"launch\.eval .*--n_passes=", EVAL_BUDGET, (("workdir", ("eval_n_passes.json", "*.png")),)),
    Rule(r"launch\.eval --workdir=workdirs/rule110_small$", EVAL_BUDGET, (("workdir", ("eval_step4.json",)),),
         fast=True),
    Rule(r"launch\.eval ", EVAL_BUDGET, (("workdir", ("eval_step*.json",)),)),
    # The Hugging Face import runs with the full suite (its model compiles anew); the run-based retrofit is fast.
    Rule(r"launch\.retrofit --from_hf=", (), (("out", ("config.json", "retrofit.json", "checkpoints")),)),
    Rule(r"launch\.retrofit ", (), (("out", ("config.json", "retrofit.json", "checkpoints")),), fast=True),
    Rule(r"launch\.plot --runs=workdirs/rule110_small,", (), (("output", ("",)),), fast=True),
    Rule(r"launch\.plot ", (), (("output", ("",)),)),
    Rule(r"^python3 -m tasks "),
    Rule(r"launch\.sweep .*--report", (), (("workdir", ("results.csv", "results.md")),)),
    # The later eval reads nrand4_s0, so this sweep runs (one seed, a tiny token budget); the rest plan only.
    Rule(r"launch\.sweep .*--variants=nrand4 ", ("--seeds=0", "--tokens=3e3", "--parallel=1",
                                                  "--config.train.eval_batches=1"),
         (("workdir", ("results.csv", "results.md", "nrand4_s0/config.json", "nrand4_s0/checkpoints")),)),
    # The --report after it needs a finished run: one variant, one seed, a tiny budget.
    Rule(r"launch\.sweep .*--workdir=workdirs/sweep ", ("--variants=n1", "--seeds=0", "--tokens=3e3", "--parallel=1",
                                                       "--config.train.eval_batches=1")),
    Rule(r"launch\.sweep ", ("--dry_run",)),
    Rule(r"launch\.bench ", ("--quick",),
         skip="timing runs of several minutes each; tests/test_bench_train.py runs the train bench end to end"),
)


def rule_for(command: str) -> Rule:
  matches = [r for r in RULES if re.search(r.pattern, command)]
  if not matches:
    raise AssertionError(f"README command has no rule in tests/test_readme.py: {command}")
  return matches[0]


def _flag(command: str, name: str) -> str | None:
  for token in shlex.split(command):
    if token.startswith(f"--{name}="):
      return token.split("=", 1)[1]
  return None


def _copy_repo(dest: str) -> None:
  files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
  for rel in filter(None, files.decode().split("\0")):
    src = os.path.join(REPO, rel)
    if not os.path.isfile(src):
      continue  # deleted in the working tree
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    with open(src, "rb") as f, open(os.path.join(dest, rel), "wb") as g:
      g.write(f.read())


def _run(command: str, rule: Rule, cwd: str) -> None:
  argv = shlex.split(command) + list(rule.append)
  if argv[0] == "python3":
    argv[0] = sys.executable
  # One CPU device, as on the machine the README speaks to (not the fake devices of conftest.py).
  env = fast_compile_env(dict(os.environ, SLEEP_JAX_NO_PIN="1", PYTHONPATH=cwd), keep_xla_flags=False)
  proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
  tail = (proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-3000:])
  assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}\n{tail}"
  for flag, names in rule.writes:
    value = _flag(command, flag) if flag else "."
    assert value is not None, f"{command}: no --{flag}"
    assert not os.path.isabs(value), f"README paths are relative: --{flag}={value}"
    for name in names:
      pattern = os.path.join(cwd, value, name) if name else os.path.join(cwd, value)
      assert glob.glob(pattern), f"{command} did not write {os.path.join(value, name)}\n{tail}"


def test_every_readme_command_has_a_rule():
  commands = readme_commands(open(README).read())
  assert len(commands) >= 15, commands
  for command in commands:
    rule_for(command)
  # The default suite covers the chain a new user runs first.
  fast = [c for c in commands if rule_for(c).fast]
  for kind in ("launch.train", "launch.eval", "--n_passes", "init_from=workdirs/", "launch.retrofit", "launch.plot"):
    assert any(kind in c for c in fast), f"no fast README command with {kind}"


def test_readme_parser():
  text = ("```bash\npython3 -m a --x=1 \\\n    --y=2   # note\n"
          "python3 -m b --w=d [--opt=3] # c\npip install -e '.[test]'\n```\n```python\nnot = 'a command'\n```\n")
  assert readme_commands(text) == ["python3 -m a --x=1 --y=2", "python3 -m b --w=d", "pip install -e '.[test]'"]


def _run_commands(tmp_path, fast_only: bool):
  repo = str(tmp_path / "repo")
  _copy_repo(repo)
  ran = 0
  for command in readme_commands(open(README).read()):
    rule = rule_for(command)
    if rule.skip or (fast_only and not rule.fast):
      continue
    _run(command, rule, repo)
    ran += 1
  return ran


def test_readme_main_job_chain_on_relative_paths(tmp_path):
  """Train, eval, eval at several N, init_from, retrofit and plot, as written (relative workdirs)."""
  assert _run_commands(tmp_path, fast_only=True) >= 6


@pytest.mark.slow
def test_readme_every_command(tmp_path):
  assert _run_commands(tmp_path, fast_only=False) >= 15


def test_readme_python_snippet_runs():
  """The library section's snippet runs as written (no undefined names) and does what its comments say."""
  blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
  assert blocks, "the README has no python block"
  scope: dict = {}
  exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - the README's own example
  assert scope["loss"].shape == () and bool(scope["loss"] > 0)
  assert scope["aux"].passes.shape == (2, 3)
  assert scope["answer"].shape[-1] == 4
  assert scope["session"].stats.sleeps == 1
  assert scope["fast_weights"].shape == (2, 1, 16, 16)
