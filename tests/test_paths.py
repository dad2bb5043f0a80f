"""User paths are resolved once, where they enter: relative to the current directory, ``~`` expanded."""
import os

from absl import flags

from launch import cli, experiment
from launch.configs import rule110_small


def test_user_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cli.user_path("workdirs/a") == str(tmp_path / "workdirs" / "a")
  assert cli.user_path("~/x") == str(tmp_path / "home" / "x")
  assert cli.user_path("/abs/p") == "/abs/p"
  assert cli.user_path("") is None and cli.user_path(None) is None


def test_path_flags_are_absolute_once_parsed(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  fv = flags.FlagValues()
  one = cli.define_path("workdir", None, "a dir", flag_values=fv)
  many = cli.define_path_list("runs", [], "dirs", flag_values=fv)
  fv(["prog", "--workdir=workdirs/run", "--runs=a,/b/c"])
  assert one.value == str(tmp_path / "workdirs" / "run")
  assert many.value == [str(tmp_path / "a"), "/b/c"]


def test_init_from_resolved_where_the_config_enters(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = rule110_small.get_config()
  cfg.train.init_from = "workdirs/n1"
  exp = experiment.experiment_from_config(cfg)
  assert exp.train.init_from == str(tmp_path / "workdirs" / "n1")
  cfg.train.init_from = ""
  assert experiment.experiment_from_config(cfg).train.init_from is None


def test_every_launch_path_flag_is_a_path_flag():
  """No launch command defines a path flag (workdir, out, output, runs, table, from_workdir, json) as a plain string."""
  import ast
  import glob
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path_names = {"workdir", "out", "output", "runs", "table", "from_workdir", "json", "from_json"}
  seen = set()
  for path in glob.glob(os.path.join(root, "launch", "**", "*.py"), recursive=True):
    for node in ast.walk(ast.parse(open(path).read())):
      if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        continue
      name = str(node.args[0].value).lstrip("-")
      if name not in path_names:
        continue
      func = ast.unparse(node.func)
      seen.add(name)
      if func.endswith("add_argument"):  # argparse: the type resolves the path
        types = [ast.unparse(k.value) for k in node.keywords if k.arg == "type"]
        assert types and ("user_path" in types[0] or "_path_or_empty" in types[0]) or name == "from_json", (
            f"{path}: --{name} has no path type")
      else:
        assert func in ("cli.define_path", "cli.define_path_list"), f"{path}: --{name} is defined by {func}"
  assert seen >= {"workdir", "out", "output", "runs", "table", "from_workdir", "json"}, seen
