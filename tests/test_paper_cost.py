"""launch.paper_cost: extrapolation arithmetic, memory analysis, table formatting and the train commands.

No paper config is trained: the memory test compiles a toy step.
"""
import json
import math
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import experiment
from launch import paper_cost as pc
from launch import sweep_flops


def _ex(**kw):
  base = dict(cpu_batch=2, paper_batch=512, cpu_step_s=0.5, cpu_step_core_s=0.25, seq_flops=3e9, seq_len=100,
              num_steps=1000, accel_flops_per_s=100e12)
  return pc.Extrapolation(**{**base, **kw})


def test_extrapolation_scales_the_measured_rate_to_the_paper_run():
  ex = _ex()
  assert ex.cpu_step_flops == 6e9 and ex.paper_step_flops == 512 * 3e9
  assert ex.run_flops == 1000 * 512 * 3e9 and ex.run_tokens == 1000 * 512 * 100
  assert math.isclose(ex.cpu_flops_per_s, 12e9) and math.isclose(ex.cpu_flops_per_core_s, 24e9)
  # FLOPs are linear in the batch: the paper step costs paper/cpu batch times the measured one.
  assert math.isclose(ex.cpu_run_s, 0.5 * 512 / 2 * 1000)
  assert math.isclose(ex.cpu_run_core_s, 0.25 * 512 / 2 * 1000)
  assert math.isclose(ex.accel_step_s, 512 * 3e9 / 100e12)
  assert math.isclose(ex.accel_run_s, 1000 * 512 * 3e9 / 100e12)
  unmeasured = _ex(cpu_step_s=None, cpu_step_core_s=None)
  assert unmeasured.cpu_flops_per_s is None and unmeasured.cpu_run_s is None
  assert unmeasured.cpu_run_core_s is None
  assert unmeasured.accel_run_s == ex.accel_run_s


def test_durations_and_counts_format_with_units():
  assert pc.format_duration(None) == "-"
  assert pc.format_duration(0.0123) == "0.012 s"
  assert pc.format_duration(42) == "42 s"
  assert pc.format_duration(90) == "1.5 min"
  assert pc.format_duration(2 * 3600) == "2.0 h"
  assert pc.format_duration(3 * 86400) == "3.0 d"
  assert pc.format_duration(2 * 365 * 86400) == "2.0 y"
  assert pc.format_count(4.22e9) == "4.22G" and pc.format_count(1.08e12) == "1.08T"
  assert pc.format_count(5.12e9) == "5.12G" and pc.format_count(12) == "12"


def test_bytes_format_with_binary_units():
  assert pc.format_bytes(None) == "-" and pc.format_bytes(512) == "512 B"
  assert pc.format_bytes(3 * 2**20) == "3 MiB" and pc.format_bytes(3.5 * 2**30) == "3.5 GiB"


def _toy_step(state, batch):
  # A train step in miniature: the state is donated and comes back the same shape.
  h = jnp.tanh(batch["x"] @ state["w"])
  return {"w": state["w"] - 0.1 * batch["x"].T @ h, "b": state["b"] + h.mean(0)}, {"loss": jnp.mean(h * h)}


def test_step_memory_is_the_compiled_analysis_at_the_asked_batch_and_grows_with_it():
  d = 64
  step = jax.jit(_toy_step, donate_argnums=(0,))
  state = {"w": jnp.zeros((d, d), jnp.float32), "b": jnp.zeros((d,), jnp.float32)}
  batch = {"x": jnp.ones((2, d), jnp.float32)}
  state_bytes = (d * d + d) * 4
  peaks = {}
  for b in (2, 16, 256):
    mem = pc.step_memory_at_batch(step, state, batch, b)
    abstract = pc.abstract_step_args(state, batch, b)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert abstract[1]["x"].shape == (b, d) and abstract[0]["w"].shape == (d, d)
    # By hand: the arguments are the state and a (b, d) float32 batch, and the donated state
    # is written in place by the same-shaped new state.
    assert mem.argument_bytes == state_bytes + b * d * 4
    assert mem.alias_bytes == state_bytes
    assert mem.output_bytes >= state_bytes + 4
    # The peak is the analysis' own fields combined as documented.
    analysis = step.lower(*abstract).compile().memory_analysis()
    assert mem.peak_bytes == (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                              + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
    assert mem.to_json()["peak_bytes"] == mem.peak_bytes
    peaks[b] = mem.peak_bytes
  assert peaks[2] < peaks[16] < peaks[256]
  # The larger batch adds at least its own bytes.
  assert peaks[256] - peaks[2] >= (256 - 2) * d * 4
  # The given arrays are only read for their shapes: still usable (not donated).
  np.testing.assert_array_equal(np.asarray(state["w"]), 0.0)


def test_train_commands_are_the_shipped_configs_with_only_n_changed():
  rule110, _, hard, sliding = pc.PAPER_CONFIGS
  assert pc.train_command(rule110, 1, 1) == ("python -m launch.train --config=launch/configs/rule110_paper.py "
                                             "--workdir=workdirs/rule110_paper_n1")
  assert pc.train_command(sliding, 4, 1) == (
      "python -m launch.train --config=launch/configs/gsm_math_paper.py --config.task_preset=paper_sliding "
      "--config.sleep.n_passes=4 --workdir=workdirs/gsm_math_paper_paper_sliding_n4")
  assert pc.workdir_name(hard, 6) == "workdirs/gsm_math_paper_n6"
  # The command's overrides build the experiment the cost was computed for (parsed as launch.train does).
  for paper in pc.PAPER_CONFIGS:
    args = shlex.split(pc.train_command(paper, 4, 1))
    assert args[:3] == ["python", "-m", "launch.train"]
    path = args[3].split("=", 1)[1]
    overrides = [a for a in args[4:] if a.startswith("--config.")]
    exp = experiment.experiment_from_config(pc.load_config(path, overrides))
    assert exp.sleep.n_passes == 4
    shipped = experiment.experiment_from_config(pc.load_config(paper.path, list(paper.overrides)))
    assert exp.train == shipped.train and exp.model == shipped.model and exp.task_config == shipped.task_config
  sliding_exp = experiment.experiment_from_config(pc.load_config(sliding.path, list(sliding.overrides)))
  assert (sliding_exp.sleep.eviction, sliding_exp.sleep.window) == ("sliding", 512)


def test_table_lists_measured_and_failed_rows_with_their_commands():
  rule110, depo = pc.PAPER_CONFIGS[:2]
  exp = experiment.experiment_from_config(pc.load_config(rule110.path, []))
  flops = sweep_flops.experiment_flops(exp)
  common = dict(config_n_passes=1, cpu_batch=2, accel_tflops=100.0)
  ok = pc.make_row(rule110, 1, paper_batch=exp.train.batch_size, seq_flops=flops.train, seq_len=flops.seq_len,
                   num_steps=exp.train.num_steps,
                   measured={"step_s": 0.5, "step_core_s": 0.25, "timed_steps": 3, "compile_core_s": 51.2,
                             "step_bytes": 3 * 2**20, "paper_step_memory": {"peak_bytes": 1.5 * 2**30}},
                   **common)
  assert ok["paper_step_flops"] == exp.train.batch_size * flops.train
  assert math.isclose(ok["cpu_run_core_s_extrapolated"], 0.25 * exp.train.batch_size / 2 * exp.train.num_steps)
  first_only = pc.make_row(rule110, 4, paper_batch=512, seq_flops=1e9, seq_len=100, num_steps=10,
                           measured={"step_s": 2.0, "step_core_s": 1.0, "timed_steps": 0, "step_bytes": 5 * 2**20,
                                     "paper_memory_error": "not compiled within 180 CPU s at the paper batch"},
                           **common)
  bad = pc.make_row(depo, 4, paper_batch=128, seq_flops=7e10, seq_len=360, num_steps=200_000,
                    measured={"error": "not compiled within 180 CPU s"}, **common)
  text = pc.format_table([ok, first_only, bad])
  lines = text.splitlines()
  assert lines[0].split()[:2] == ["config", "N"] and set(lines[1]) <= {"-", " "}
  widths = {len(line) for line in lines[:2]}
  assert len(widths) == 1, "header and rule line up"
  row = lines[2].split()
  assert row[:7] == ["rule110_paper", "1", "512", "2", "0.5", "0.25", "3"]
  assert row[9] == f"{2 * flops.train / 0.25 / 1e9:.1f}"  # GFLOP/core-s
  assert row[12] == "51"  # compile core-s
  assert row[13:17] == ["3", "MiB", "1.5", "GiB"]  # peak memory at the CPU and the paper batch
  assert lines[3].split()[6] == "1*" and lines[3].split()[13:16] == ["5", "MiB", "n/a"]
  assert "rule110_paper N=4 peak mem paper B: not compiled within 180 CPU s at the paper batch" in text
  assert lines[4].split()[4:6] == ["n/a", "n/a"] and "depo_paper N=4: not compiled within 180 CPU s" in text
  assert lines[4].split()[13:15] == ["-", "-"]  # a row from a file older than the memory columns
  for r in (ok, first_only, bad):
    assert r["command"] in text
  header = pc.header(accel_tflops=100.0, load=(12.0, 13.0), cores=2, backend="cpu")
  assert "loaded" in header and "extrapolated" in header and "100 TFLOP/s" in header and "12.0-13.0" in header
  assert "argument + output + temp - alias" in header and "pinned" not in header and "nice" not in header
  pinned = pc.header(accel_tflops=100.0, load=(1.0, 2.0), cores=2, backend="cpu", cpus_allowed=1, nice=10)
  assert "pinned to 1 of them, at nice 10" in pinned

  # Two runs' --json documents print as one table, in order.
  doc = lambda rows, load: {"cpu_batch": "2", "accel_tflops": 100.0, "load_average": load, "cores": 2,
                            "backend": "cpu", "rows": rows}
  merged = pc.merge_reports([doc([ok], [11.0, 12.0]), doc([first_only, bad], [15.0, 14.0])])
  assert merged["rows"] == [ok, first_only, bad] and merged["load_average"] == [11.0, 12.0, 15.0, 14.0]
  assert pc.report(merged).endswith(text) and "11.0-15.0" in pc.report(merged)
  with pytest.raises(ValueError, match="accel_tflops"):
    pc.merge_reports([doc([ok], [1.0]), {**doc([ok], [1.0]), "accel_tflops": 350.0}])
  # A file written before the paper-batch memory column merges with a new one; its cell is "-".
  older = {k: v for k, v in ok.items() if not k.startswith("paper_") or k == "paper_step_flops"}
  older["n_passes"] = 6  # another row (the same config and N would be replaced)
  merged_lines = pc.format_table(pc.merge_reports([doc([older], [1.0]), doc([ok], [2.0])])["rows"]).splitlines()
  assert merged_lines[2].split()[13:16] == ["3", "MiB", "-"] and merged_lines[3].split()[15:17] == ["1.5", "GiB"]
  # A rerun of a config and N replaces its row where it stood; the code each row measured is said.
  rerun = {**first_only, "step_core_s": 9.0, "commit": "abc123"}
  merged = pc.merge_reports([doc([ok, first_only, bad], [1.0]), doc([rerun], [2.0])])
  assert merged["rows"] == [ok, rerun, bad]
  assert "code measured: not recorded (2 rows), commit abc123 (1 row)" in pc.report(merged)
  new_doc = {**doc([ok], [2.0]), "cpus_allowed": 1, "nice": 0}
  assert "pinned to 1" in pc.report(pc.merge_reports([new_doc, new_doc]))
  assert "pinned" not in pc.report(pc.merge_reports([doc([older], [1.0]), new_doc]))


def test_from_json_prints_the_merged_table_of_the_files(tmp_path, capsys):
  rule110 = pc.PAPER_CONFIGS[0]
  row = lambda n, **m: pc.make_row(rule110, n, config_n_passes=1, paper_batch=512, cpu_batch=2, seq_flops=1e9,
                                   seq_len=100, num_steps=10, accel_tflops=100.0,
                                   measured={"step_s": 0.5, "step_core_s": 0.25, "timed_steps": 3, **m})
  old = {"cpu_batch": "2", "accel_tflops": 100.0, "load_average": [1.0, 1.5], "cores": 2, "backend": "cpu",
         "rows": [row(4, step_bytes=2**20)]}  # a file from before the paper-batch memory, pinning and nice
  new = {**old, "cpus_allowed": 1, "nice": 0,
         "rows": [row(1, step_bytes=2**20, paper_step_memory={"peak_bytes": 2**30})]}
  paths = [tmp_path / "old.json", tmp_path / "new.json"]
  for path, d in zip(paths, (old, new)):
    path.write_text(json.dumps(d))
  assert pc.main([f"--from_json={paths[0]},{paths[1]}"]) == 0
  out = capsys.readouterr().out
  assert out == pc.report(pc.merge_reports([old, new])) + "\n"
  old_cells, new_cells = (line.split() for line in out.splitlines()[-6:-4])
  assert old_cells[13:16] == ["1", "MiB", "-"] and new_cells[13:17] == ["1", "MiB", "1", "GiB"]


def test_n_passes_parse():
  assert pc.parse_n_passes("1,4") == [1, 4] and pc.parse_n_passes("6") == [6]
  for bad in ("", "0,4", "-1"):
    with pytest.raises(ValueError, match="n_passes"):
      pc.parse_n_passes(bad)


def test_batches_parse_with_per_config_overrides():
  assert pc.parse_batches("2") == (2, {})
  assert pc.parse_batches("2,gsm_math_paper=1") == (2, {"gsm_math_paper": 1})
  for bad, match in (("gsm_math_paper=1", "default"), ("0", ">= 1"), ("2,depo_paper=x", "config=N")):
    with pytest.raises(ValueError, match=match):
      pc.parse_batches(bad)
