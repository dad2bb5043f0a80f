"""RESULTS.md's tables are generated from the committed files under results/ (launch.report)."""
import os

import pytest

from launch import report
from launch import sweep
from launch import sweep_results


def test_results_md_matches_the_committed_result_files():
  with open(report.RESULTS_MD) as f:
    text = f.read()
  assert set(report.blocks(text)) == set(report.TABLES), "every registered table is placed, every block registered"
  generated = report.render(text)
  assert generated == text, "RESULTS.md disagrees with results/: run `python3 -m launch.report` and review the diff"


def test_the_check_fails_on_a_hand_edited_number(tmp_path, capsys):
  text = "intro\n<!-- table: t -->\nstale 0.962\n<!-- /table: t -->\nafter\n"
  path = tmp_path / "R.md"
  path.write_text(text)
  report.TABLES["t"] = lambda: "fresh 0.922\n"
  try:
    assert report.main(["--results", str(path), "--check"]) == 1
    assert "-stale 0.962" in capsys.readouterr().out and path.read_text() == text  # --check writes nothing
    assert report.main(["--results", str(path)]) == 0
    assert path.read_text() == "intro\n<!-- table: t -->\nfresh 0.922\n<!-- /table: t -->\nafter\n"
    assert report.main(["--results", str(path), "--check"]) == 0
  finally:
    del report.TABLES["t"]
  with pytest.raises(KeyError):
    report.render("<!-- table: nowhere -->\n<!-- /table: nowhere -->")


def test_the_demo_results_md_is_what_the_sweep_report_writes(tmp_path):
  sweep.report(report.DEMO_RUNS, quiet=True, out_dir=str(tmp_path))
  for name in ("results.md", "results.csv", "sleep_settings.md"):
    with open(os.path.join(report.DEMO, name)) as f:
      assert (tmp_path / name).read_text() == f.read(), name


def test_a_baseline_counts_each_eval_set_once():
  rows = [{"depth": 6, "eval_seed": 0, "seed": 0, "majority": 0.50},
          {"depth": 6, "eval_seed": 0, "seed": 1, "majority": 0.50},  # a second run on eval set 0
          {"depth": 6, "eval_seed": 0, "seed": 2, "majority": 0.50},
          {"depth": 6, "eval_seed": 3, "seed": 3, "majority": 0.56}]
  got = sweep_results.baselines(rows)["majority"]
  assert got == {"values": {6: pytest.approx(0.53)}, "eval_sets": 2}  # not (3 * 0.50 + 0.56) / 4
  one = sweep_results.baselines(rows[:3])["majority"]
  assert one["eval_sets"] == 1 and sweep_results.baseline_label("majority", 1) == "*majority*"
