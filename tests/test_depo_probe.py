"""launch.depo_probe: the listing-order classes of a k-hop path, and the coded eval batches."""
import dataclasses

import numpy as np
import pytest

import tasks
from launch import depo_probe

TASK = tasks.get_task("depo")


def test_path_order_classes_on_a_hand_made_cycle():
  # cycle 10 -> 11 -> 12 -> 13 -> 10; edge i is cycle[i] -> cycle[i + 1]; listed as edges 2, 1, 0, 3.
  meta = {"n": 4, "cycle": np.array([10, 11, 12, 13]), "edge_order": np.array([2, 1, 0, 3])}
  assert depo_probe.path_order(meta, 10, 1) == 0
  assert depo_probe.path_order(meta, 10, 2) == 1  # edge 1 (11 -> 12) listed before edge 0 (10 -> 11)
  assert depo_probe.path_order(meta, 10, 3) == 1  # 2, 1, 0: every later hop listed earlier
  assert depo_probe.path_order(meta, 12, 2) == 0  # edges 2 then 3: path order
  assert depo_probe.path_order(meta, 11, 3) == 2  # edges 1, 2, 3 at positions 1, 0, 3: mixed
  assert depo_probe.path_order(meta, 13, 2) == 1  # edges 3, 0 (wrapping) at positions 3, 2: later hop first


@pytest.mark.parametrize("edge_targets", [0, 1])
def test_coded_batches_label_each_answer_with_k_and_order_and_refuse_other_examples(edge_targets):
  config = dataclasses.replace(TASK.preset("small"), answers_visible=False, edge_targets=edge_targets)
  examples = [TASK.make_example(config, 5, i, "eval") for i in range(4)]
  batch = {key: np.stack([ex[key] for ex in examples]) for key in ("tokens", "targets", "loss_mask", "depth")}
  (coded,) = list(depo_probe.coded_batches([batch], config, 5))
  for row, ex in enumerate(examples):
    pos = np.nonzero(ex["depth"] >= 0)[0]  # the answers; edge targets are trained on at depth -1
    assert len(pos) == config.n_queries and ex["loss_mask"].sum() == config.n_queries + edge_targets * ex["meta"]["n"]
    expect = [10 * k + depo_probe.path_order(ex["meta"], s, k) for s, k, _ in ex["meta"]["queries"]]
    assert coded["depth"][row, pos].tolist() == expect
    others = np.ones(config.seq_len, bool)
    others[pos] = False
    assert np.all(coded["depth"][row][others] == -1)
  with pytest.raises(ValueError, match="index order"):
    list(depo_probe.coded_batches([batch], config, 6))
