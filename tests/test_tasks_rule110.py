"""Rule 110 task: ground truth by an independent simulation, layout, splits, bad configs."""
import dataclasses
import functools

import numpy as np
import pytest

import tasks
from tasks import example as ex_lib
from tasks import rule110

TASK = tasks.get_task("rule110")


def wolfram_step(cells: list[int], rule: int = 110) -> list[int]:
  """One step of an elementary automaton read straight off its Wolfram code."""
  w = len(cells)
  return [(rule >> (4 * cells[(j - 1) % w] + 2 * cells[j] + cells[(j + 1) % w])) & 1 for j in range(w)]


@functools.cache
def examples(preset: str, split: str, n: int):
  config = TASK.preset(preset)
  return config, [TASK.make_example(config, 0, i, split) for i in range(n)]


def check_against_brute_force(config, ex, tok):
  """Re-derives every label from the decoded text alone."""
  w, n = config.width, config.n_states
  a = int(config.announce_t)  # 1: every state window starts with the query token
  lw = w + a
  words = tok.decode(ex["tokens"]).split()
  assert len(words) == config.seq_len == n * lw + n and config.window == lw
  # Every state (after its announced query, if any) fills one window of L = W (+ 1) tokens exactly.
  states = [[int(c) for c in words[i * lw + a:(i + 1) * lw]] for i in range(n)]
  assert all(set(s) <= {0, 1} for s in states)
  query = words[n * lw]
  assert query.startswith("?")
  if a:
    assert all(words[i * lw] == query for i in range(n))
  t = int(query[1:])
  labels = []
  for s in states:
    for _ in range(t):
      s = wolfram_step(s)
    labels.append(s[0])
  answer_pos = np.arange(n * lw, n * lw + n)
  np.testing.assert_array_equal(np.nonzero(ex["loss_mask"])[0], answer_pos)
  assert [int(tok.decode([ex["targets"][p]])) for p in answer_pos] == labels
  # Teacher forcing: label i (i < n - 1) is also the input after the query.
  assert [int(x) for x in words[n * lw + 1:]] == labels[:-1]
  np.testing.assert_array_equal(ex["depth"][answer_pos], t)
  np.testing.assert_array_equal(ex["answer_id"][answer_pos], np.arange(n))
  assert np.all(ex["depth"][ex["loss_mask"] == 0] == -1) and np.all(ex["answer_id"][ex["loss_mask"] == 0] == -1)
  np.testing.assert_array_equal(ex["targets"][:-1], ex["tokens"][1:])
  assert ex["meta"]["t"] == t and list(ex["meta"]["labels"]) == labels
  np.testing.assert_array_equal(ex["meta"]["states"], np.array(states))
  return t


@pytest.mark.parametrize("preset,n", [("small", 2000), ("paper", 250), ("paper_depth", 250)])
def test_labels_match_independent_simulation(preset, n):
  config, exs = examples(preset, "train", n)
  tok = TASK.tokenizer(config)
  ts = [check_against_brute_force(config, ex, tok) for ex in exs]
  assert set(ts) == set(range(config.t_min, config.t_max + 1))  # every depth bucket is populated


@pytest.mark.parametrize("n_states", [1, 3])
def test_announced_depth_layout_matches_independent_simulation(n_states):
  # announce_t: "?t" leads every state window (L = W + 1); labels, answers and the prediction window as before.
  config = rule110.Rule110Config(width=9, n_states=n_states, t_min=0, t_max=5, announce_t=True,
                                 num_eval_examples=64)
  tok = TASK.tokenizer(config)
  assert TASK.window(config) == 10 and TASK.seq_len(config) == n_states * 10 + n_states
  exs = [TASK.make_example(config, 1, i, split) for i in range(300) for split in ("train", "eval")]
  ts = [check_against_brute_force(config, ex, tok) for ex in exs]
  assert set(ts) == set(range(6))
  # The sleeping windows hold no loss; the last (prediction) window holds every answer.
  starts = ex_lib.window_starts(TASK.seq_len(config), TASK.window(config))
  assert starts[-1] == n_states * 10 and all(ex["loss_mask"][:starts[-1]].sum() == 0 for ex in exs)
  plain = dataclasses.replace(config, announce_t=False)
  assert TASK.window(plain) == 9 and TASK.seq_len(plain) == n_states * 9 + n_states


def test_table_matches_wolfram_code_and_steps():
  for pattern in range(8):
    l, c, r = (pattern >> 2) & 1, (pattern >> 1) & 1, pattern & 1
    assert rule110.RULE110_TABLE[pattern] == (110 >> pattern) & 1
    # One step on a 3-cell ring: cell 1 sees exactly (l, c, r).
    assert rule110.rule110_steps([l, c, r], 1)[1] == rule110.RULE110_TABLE[pattern]
  states = np.random.default_rng(0).integers(0, 2, size=(3, 5, 11))
  got = rule110.rule110_steps(states, 9)
  assert got.shape == states.shape
  for idx in np.ndindex(3, 5):
    cells = states[idx].tolist()
    for _ in range(9):
      cells = wolfram_step(cells)
    assert got[idx].tolist() == cells


def test_rule110_steps_hand_example():
  # A lone 1 grows to the left: 001 -> 1, 010 -> 1, 100 -> 0.
  np.testing.assert_array_equal(rule110.rule110_steps([0, 0, 0, 1, 0, 0], 1), [0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(rule110.rule110_steps([0, 0, 0, 1, 0, 0], 2), [0, 1, 1, 1, 0, 0])
  # Periodic boundary: the cell left of index 0 is the last one.
  np.testing.assert_array_equal(rule110.rule110_steps([1, 0, 0, 0], 1), [1, 0, 0, 1])
  np.testing.assert_array_equal(rule110.rule110_steps([1, 0, 0, 0], 0), [1, 0, 0, 0])


def test_paper_preset_layout():
  config = TASK.preset("paper")
  assert (config.width, config.n_states, config.t_min, config.t_max) == (24, 4, 32, 32)
  assert TASK.seq_len(config) == 100 and TASK.window(config) == 24 and TASK.eviction(config) == "hard"
  ex = TASK.make_example(config, 3, 5)
  windows = ex_lib.window_starts(100, 24)
  assert windows == [0, 24, 48, 72, 96]
  for start in windows[:4]:  # consolidation windows: a whole state, no loss
    assert set(ex["tokens"][start:start + 24].tolist()) <= {1, 2}
    assert ex["loss_mask"][start:start + 24].sum() == 0
  np.testing.assert_array_equal(ex["loss_mask"][96:], 1.0)


def test_train_eval_disjoint():
  config, train = examples("small", "train", 2000)
  _, evals = examples("small", "eval", 2000)
  train_set = {ex["tokens"].tobytes() for ex in train}
  eval_set = {ex["tokens"].tobytes() for ex in evals}
  assert len(train_set) > 1900 and len(eval_set) > 1900
  assert not train_set & eval_set
  assert all(ex_lib.split_of_tokens(ex["tokens"]) == "eval" for ex in evals)


def test_deterministic_and_index_sensitive():
  config = TASK.preset("small")
  a, b = TASK.make_example(config, 7, 11), TASK.make_example(config, 7, 11)
  for key in ex_lib.ARRAY_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["tokens"], TASK.make_example(config, 7, 12)["tokens"])
  assert not np.array_equal(a["tokens"], TASK.make_example(config, 8, 11)["tokens"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=2), "width"),
    (dict(t_min=-1), "t_min"),
    (dict(t_min=5, t_max=4), "t_max"),
    (dict(n_states=0), "n_states"),
    (dict(width=4, n_states=5), "prediction window"),
    (dict(num_train_examples=0), "num_train_examples"),
    (dict(announce_t=1), "announce_t"),
    (dict(announce_t="yes"), "announce_t"),
])
def test_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rule110.Rule110Config(**kwargs)


def test_bad_arguments():
  config = TASK.preset("small")
  with pytest.raises(ValueError, match="split"):
    TASK.make_example(config, 0, 0, "test")
  with pytest.raises(ValueError, match="index"):
    TASK.make_example(config, 0, -1)
  with pytest.raises(ValueError, match="seed"):
    TASK.make_example(config, -3, 0)
  with pytest.raises(ValueError, match="Rule110Config"):
    TASK.make_example(tasks.get_task("depo").preset("small"), 0, 0)


def test_too_few_sequences_to_split():
  # W = 3, one state, fixed t: only 8 distinct sequences; some split may run dry,
  # and then the error says so instead of looping or overlapping.
  config = rule110.Rule110Config(width=3, n_states=1, t_min=0, t_max=0)
  seen = {s: set() for s in ex_lib.SPLITS}
  for split in ex_lib.SPLITS:
    for i in range(200):
      try:
        seen[split].add(TASK.make_example(config, 0, i, split)["tokens"].tobytes())
      except ValueError as e:
        assert "too few distinct sequences" in str(e)
  assert not seen["train"] & seen["eval"]
  assert len(seen["train"] | seen["eval"]) <= 8


def test_tokenizer_roundtrip():
  config = TASK.preset("paper")
  tok = TASK.tokenizer(config)
  ex = TASK.make_example(config, 0, 0)
  assert tok.encode(tok.decode(ex["tokens"])) == ex["tokens"].tolist()
  assert tok.vocab_size == TASK.vocab_size(config) == 3 + 33
  with pytest.raises(ValueError, match="not in the vocabulary"):
    tok.encode("0 1 2")
  with pytest.raises(ValueError, match="outside"):
    tok.decode([tok.vocab_size])


def test_dataclass_replace_revalidates():
  with pytest.raises(ValueError, match="width"):
    dataclasses.replace(TASK.preset("paper"), width=1)
