"""Depo task: ground truth by walking the decoded cycle, k < n and distinct sources, layout, n sampling,
splits, bad configs."""
import dataclasses
import functools

import numpy as np
import pytest

import tasks
from tasks import depo
from tasks import example as ex_lib

TASK = tasks.get_task("depo")


@functools.cache
def examples(preset: str, split: str, n: int):
  config = TASK.preset(preset)
  return config, [TASK.make_example(config, 0, i, split) for i in range(n)]


def check_against_brute_force(config, ex, words, split):
  """Re-derives every answer from the decoded text alone; returns (n, ks)."""
  c = config.context_len
  context, queries = words[:c], words[c:]
  first = next(i for i, w in enumerate(context) if w != "<pad>")
  assert set(context[:first]) <= {"<pad>"}
  edges = context[first:]
  assert len(edges) % 4 == 0
  succ = {}
  for i in range(0, len(edges), 4):
    x, arrow, y, comma = edges[i:i + 4]
    assert (arrow, comma) == ("->", ",") and x.startswith("n") and y.startswith("n")
    assert x not in succ
    succ[x] = y
  n = len(succ)
  # One directed cycle through all n nodes.
  start = next(iter(succ))
  node, seen = start, []
  for _ in range(n):
    seen.append(node)
    node = succ[node]
  assert node == start and len(set(seen)) == n and set(succ.values()) == set(succ)
  assert all(int(w[1:]) < config.pool_size for w in seen)

  assert len(queries) == 6 * config.n_queries
  ks = []
  sources = queries[1::6]
  if config.query_sources == "shared":
    assert len(set(sources)) == 1  # one source: no one-hop read can be chained to another
  else:
    assert len(set(sources)) == len(sources)  # distinct sources: no answer can be copied
  for j in range(config.n_queries):
    q, x, k_tok, eq, y, semi = queries[6 * j:6 * j + 6]
    assert (q, eq, semi) == ("?", "=", ";")
    k = int(k_tok[1:])
    assert 1 <= k < n  # no wrap-around: k hops mean k distinct steps
    node = x
    for _ in range(k):
      node = succ[node]
    assert y == node
    pos = c + 6 * j + 3
    assert ex["loss_mask"][pos] == 1.0 and ex["depth"][pos] == k and ex["answer_id"][pos] == j
    ks.append(k)
  assert ex["loss_mask"].sum() == config.n_queries
  if split == "train":
    assert all(1 <= k <= config.k_max for k in ks)
  else:
    assert set(ks) <= set(config.eval_ks)
  assert ex["meta"]["n"] == n
  assert [(f"n{s}", k, f"n{d}") for s, k, d in ex["meta"]["queries"]] == list(zip(
      queries[1::6], ks, queries[4::6]))
  return n, ks


@pytest.mark.parametrize("preset,split,n", [("small", "train", 2000), ("small", "eval", 1000),
                                            ("paper", "train", 300), ("paper", "eval", 300)])
def test_answers_match_cycle_walk(preset, split, n):
  config, exs = examples(preset, split, n)
  tok = TASK.tokenizer(config)
  ks = []
  for ex in exs:
    words = tok.decode(ex["tokens"]).split()
    # The stream is exactly T tokens (it ends with ";"), so the last target is padding.
    np.testing.assert_array_equal(ex["targets"][:-1], ex["tokens"][1:])
    assert ex["targets"][-1] == 0
    ks += check_against_brute_force(config, ex, words, split)[1]
  want = set(range(1, config.k_max + 1)) if split == "train" else set(config.eval_ks)
  assert set(ks) == want


def parse_queries(config, tokens):
  """``(n, sources, ks)`` read off the token ids alone: ``n`` counts the edges."""
  n = int(np.sum(tokens[:config.context_len] == depo._ARROW))
  q = tokens[config.context_len:].reshape(config.n_queries, depo.QUERY_TOKENS)
  assert np.all(q[:, 0] == depo._QUERY) and np.all(q[:, 3] == depo._EQ)
  ks = q[:, 2] - depo._hop_id(1) + 1
  return n, q[:, 1], ks


@pytest.mark.parametrize("preset", sorted(TASK.presets))
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_query_has_k_below_n_and_a_distinct_source(preset, split):
  config = TASK.preset(preset)
  n_examples = 3000
  seen_n, seen_k = set(), set()
  for i in range(n_examples):
    n, sources, ks = parse_queries(config, TASK.make_example(config, 7, i, split)["tokens"])
    assert config.n_min <= n <= config.n_max
    assert np.all((ks >= 1) & (ks < n)), (i, n, ks)
    assert len(set(sources.tolist())) == len(sources), (i, sources)
    # Hence no (source, k) pair, nor (source, k mod n), repeats in an example.
    assert len({(int(s), int(k) % n) for s, k in zip(sources, ks)}) == len(sources)
    seen_n.add(n)
    seen_k.update(ks.tolist())
  # The checks above saw the shortest cycles and the largest hops.
  assert config.n_min in seen_n
  assert max(seen_k) == (config.k_max if split == "train" else max(config.eval_ks))


def test_every_preset_keeps_hops_below_the_shortest_cycle():
  for name, config in TASK.presets.items():
    assert config.n_min > max(config.k_max, *config.eval_ks) and config.n_min >= config.n_queries, name
  paper = TASK.preset("paper")
  assert (paper.n_max, paper.n_queries, paper.eval_ks, paper.k_max) == (75, 10, (1, 2, 4, 8, 16), 16)


def test_n_follows_physicslm4_bias():
  config, exs = examples("small", "train", 2000)
  ns = np.array([ex["meta"]["n"] for ex in exs])
  p = config.n_probs()
  values = np.arange(config.n_min, config.n_max + 1)
  mean, sd = (p * values).sum(), np.sqrt((p * values ** 2).sum() - (p * values).sum() ** 2)
  assert abs(ns.mean() - mean) < 4 * sd / np.sqrt(len(ns))
  # The bias: p(n) proportional to 1 / (n + sqrt(n_max)).
  np.testing.assert_allclose(p[0] / p[-1], (config.n_max + np.sqrt(config.n_max)) / (config.n_min + np.sqrt(
      config.n_max)))
  uniform = depo.DepoConfig(**{**config.__dict__, "n_sampling": "uniform"})
  np.testing.assert_allclose(uniform.n_probs(), 1.0 / len(values))


def test_paper_layout_edges_in_sleep_windows_queries_in_prediction_window():
  config, exs = examples("paper", "train", 300)
  assert (config.context_len, config.n_queries, config.window, config.n_max) == (300, 10, 75, 75)
  t, l = TASK.seq_len(config), TASK.window(config)
  assert t == 360 and l == 75
  starts = ex_lib.window_starts(t, l)
  assert starts == [0, 75, 150, 225, 300]
  for ex in exs:
    edge_pos = np.nonzero(np.isin(ex["tokens"], [depo._ARROW, depo._COMMA]))[0]
    assert edge_pos.max() < starts[-1]  # every edge token is in a consolidation window
    assert np.all(ex["loss_mask"][:starts[-1]] == 0)
    query_pos = np.nonzero(ex["tokens"] == depo._QUERY)[0]
    assert query_pos.min() >= starts[-1] and len(query_pos) == 10
  assert max(ex["meta"]["n"] for ex in exs) > 60  # long cycles do occur


def test_train_eval_disjoint():
  _, train = examples("small", "train", 2000)
  _, evals = examples("small", "eval", 1000)
  assert not {ex["tokens"].tobytes() for ex in train} & {ex["tokens"].tobytes() for ex in evals}


def test_deterministic_and_index_sensitive():
  config = TASK.preset("paper")
  a, b = TASK.make_example(config, 1, 2, "eval"), TASK.make_example(config, 1, 2, "eval")
  for key in ex_lib.ARRAY_KEYS:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["tokens"], TASK.make_example(config, 1, 3, "eval")["tokens"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(pool_size=75), "pool_size"),                  # more nodes than the pool
    (dict(context_len=296), "context_len"),             # cannot hold 75 edges
    (dict(context_len=320), "multiple of window"),
    (dict(n_queries=13), "prediction window"),          # 78 query tokens > L = 75
    (dict(n_min=1), "n_min"),
    (dict(n_min=10, n_max=9), "n_max"),
    (dict(k_max=0), "k_max"),
    (dict(eval_ks=()), "eval_ks"),
    (dict(eval_ks=(0, 1)), "eval_ks"),
    (dict(n_sampling="zipf"), "n_sampling"),
    (dict(k_weights=(1.0,) * 15), "k_weights"),         # one weight per k = 1 .. k_max (16)
    (dict(k_weights=(0.0,) * 16), "k_weights"),
    (dict(k_weights=(-1.0,) + (1.0,) * 15), "k_weights"),
    (dict(n_min=16), "n_min .*k < n"),                   # k = 16 would wrap around a 16-cycle
    (dict(k_max=20), "n_min .*k_max = 20"),
    (dict(eval_ks=(1, 32)), "n_min .*max\\(eval_ks\\) = 32"),
    (dict(n_min=3, n_max=8, pool_size=10, context_len=75, n_queries=4, k_max=2, eval_ks=(1, 2)),
     "n_min .*n_queries"),                               # 4 queries cannot have distinct sources in a 3-cycle
])
def test_bad_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    depo.DepoConfig(**kwargs)


def test_k_weights_set_the_train_hop_distribution_and_keep_the_vocabulary():
  base = TASK.preset("small")  # k_max = 8
  weighted = dataclasses.replace(base, k_weights=(8, 4, 2, 1, 0, 0, 0, 1))
  assert TASK.vocab_size(weighted) == TASK.vocab_size(base)
  ks = np.concatenate([parse_queries(weighted, TASK.make_example(weighted, 0, i)["tokens"])[2] for i in range(1500)])
  counts = np.bincount(ks, minlength=9)[1:]
  assert counts[4:7].sum() == 0 and counts[7] > 0  # weight 0 never drawn
  want = np.array([8, 4, 2, 1, 0, 0, 0, 1]) / 16
  np.testing.assert_allclose(counts / counts.sum(), want, atol=0.02)  # 6,000 draws: s.e. <= 0.007
  # The eval split ignores the weights; unweighted training draws are unchanged (same stream as before).
  for i in range(3):
    np.testing.assert_array_equal(TASK.make_example(weighted, 0, i, "eval")["tokens"],
                                  TASK.make_example(base, 0, i, "eval")["tokens"])
  assert dataclasses.replace(base, k_weights=None) == base


def test_tokenizer_roundtrip():
  config = TASK.preset("small")
  tok = TASK.tokenizer(config)
  ex = TASK.make_example(config, 0, 0)
  assert tok.encode(tok.decode(ex["tokens"])) == ex["tokens"].tolist()
  assert tok.vocab_size == TASK.vocab_size(config)


def test_k_weights_set_from_the_command_line_reach_the_task():
  from launch import experiment
  from launch.configs import depo_small
  cfg = depo_small.get_config()
  cfg.task_config.k_weights = (4.0, 1.0)  # what --config.task_config.k_weights=(...) sets; k_max = 2
  exp = experiment.experiment_from_config(cfg.to_dict())
  assert exp.task_config.k_weights == (4.0, 1.0) and exp.task_config.k_max == 2
  with pytest.raises(TypeError):
    cfg.task_config.k_weights = "4,2"  # a typed placeholder: tuples only


def test_hidden_answers_replace_only_the_answer_inputs_and_keep_the_targets():
  visible = TASK.preset("small")
  hidden = dataclasses.replace(visible, answers_visible=False)
  tok = TASK.tokenizer(hidden)
  for split in ("train", "eval"):
    for i in range(20):
      # One draw, both formats: only the inputs after "=" differ.
      a = depo._build(visible, split, ex_lib.example_rng(0, split, i))
      b = depo._build(hidden, split, ex_lib.example_rng(0, split, i))
      answer_inputs = np.nonzero(a["loss_mask"])[0] + 1
      assert np.all(b["tokens"][answer_inputs] == 0) and np.all(a["tokens"][answer_inputs] != 0)
      keep = np.ones(visible.seq_len, bool)
      keep[answer_inputs] = False
      np.testing.assert_array_equal(a["tokens"][keep], b["tokens"][keep])
      for key in ("targets", "loss_mask", "depth", "answer_id"):
        np.testing.assert_array_equal(a[key], b[key])
      # A drawn hidden-answer example, its answers filled back in from the targets, walks the cycle.
      ex = TASK.make_example(hidden, 0, i, split)
      pos = np.nonzero(ex["loss_mask"])[0]
      assert np.all(ex["tokens"][pos + 1] == 0)
      filled = ex["tokens"].copy()
      filled[pos + 1] = ex["targets"][pos]
      check_against_brute_force(hidden, ex, [tok.vocab[int(t)] for t in filled], split)
  with pytest.raises(ValueError, match="answers_visible"):
    dataclasses.replace(visible, answers_visible=1)


def test_shared_query_sources_ask_about_one_node_and_need_hidden_answers():
  base = TASK.preset("small")
  shared = dataclasses.replace(base, answers_visible=False, query_sources="shared", n_min=9, n_queries=5)
  tok = TASK.tokenizer(shared)
  ks = []
  for split in ("train", "eval"):
    for i in range(100):
      ex = TASK.make_example(shared, 0, i, split)
      pos = np.nonzero(ex["loss_mask"])[0]
      filled = ex["tokens"].copy()
      filled[pos + 1] = ex["targets"][pos]
      _, k = check_against_brute_force(shared, ex, [tok.vocab[int(t)] for t in filled], split)
      ks += k if split == "train" else []
  # k stays uniform on 1..k_max, independently per query (5 queries x 100 examples; each count is about
  # 62 +- 7.4, so 0.5 x 62 is more than 4 standard deviations below).
  counts = np.bincount(ks, minlength=shared.k_max + 1)[1:]
  assert counts.sum() == 500 and counts.min() > 500 / shared.k_max * 0.5
  with pytest.raises(ValueError, match="answers_visible=False"):
    dataclasses.replace(base, query_sources="shared")
  with pytest.raises(ValueError, match="query_sources"):
    dataclasses.replace(base, answers_visible=False, query_sources="same")
  # With one shared source, more queries than nodes is fine (distinct sources would need n_min >= 5).
  few = dict(n_min=3, n_max=3, n_queries=5, k_max=2, eval_ks=(1, 2), context_len=32, window=32)
  with pytest.raises(ValueError, match="distinct sources"):
    dataclasses.replace(base, answers_visible=False, **few)
  ex = TASK.make_example(dataclasses.replace(base, answers_visible=False, query_sources="shared", **few), 0, 0)
  assert len({s for s, _, _ in ex["meta"]["queries"]}) == 1 and ex["loss_mask"].sum() == 5


@pytest.mark.parametrize("h", [1, 3])
def test_edge_targets_are_the_hidden_h_hop_successors_of_each_edge(h):
  """Each edge's "," is trained on the node h hops past its head, found by walking the decoded text."""
  base = dataclasses.replace(TASK.preset("small"), answers_visible=False, query_sources="shared", n_queries=5)
  config = dataclasses.replace(base, edge_targets=h)
  tok = TASK.tokenizer(config)
  assert TASK.tokenizer(base).vocab == tok.vocab
  answerable = total = 0
  for split in ("train", "eval"):
    for i in range(60):
      ex, ref = TASK.make_example(config, 0, i, split), TASK.make_example(base, 0, i, split)
      for key in ("tokens", "depth", "answer_id"):  # the same draw; only targets and the mask gain entries
        np.testing.assert_array_equal(ex[key], ref[key])
      scored = ex_lib.scored_mask(ex["loss_mask"], ex["depth"]) > 0
      np.testing.assert_array_equal(scored, ref["loss_mask"] > 0)
      np.testing.assert_array_equal(ex["targets"][scored], ref["targets"][scored])
      words = [tok.vocab[t] for t in ex["tokens"]]
      first = next(p for p, w in enumerate(words) if w != "<pad>")
      succ, listed = {}, {}
      for pos in range(first, config.context_len, 4):
        succ[words[pos]] = words[pos + 2]
        listed[words[pos]] = pos
      want = {}
      for x, pos in listed.items():
        node = succ[x]
        for _ in range(h):
          node = succ[node]
        want[pos + 3] = node  # the edge's ","
        # Answerable by attention in the wake pass: every edge of the chain after x's was listed before it.
        chain, node = [], succ[x]
        for _ in range(h):
          chain.append(listed[node])
          node = succ[node]
        answerable += max(chain) < pos
        total += 1
      aux = (ex["loss_mask"] > 0) & (ex["depth"] < 0)
      assert sorted(want) == np.nonzero(aux)[0].tolist()
      assert all(words[p] == "," and tok.vocab[ex["targets"][p]] == w for p, w in want.items())
      assert np.all(ex["answer_id"][aux] == -1)
      assert [(p, f"n{x}", f"n{y}") for p, x, y in ex["meta"]["edge_targets"]] == sorted(
          (p, words[p - 3], w) for p, w in want.items())
  # The chain of h later edges was listed before the edge with probability 1 / (h + 1) (a random order of
  # h + 1 distinct edges; 120 examples of 9..16 edges, s.e. below 0.02).
  assert abs(answerable / total - 1 / (h + 1)) < 0.06, answerable / total


def test_edge_targets_leave_the_schedule_to_the_scored_answers():
  from sleep_jax.windowed import schedule_from_mask
  config = dataclasses.replace(TASK.preset("small"), edge_targets=1)
  exs = [TASK.make_example(config, 0, i) for i in range(16)]
  mask, depth = (np.stack([e[k] for e in exs]) for k in ("loss_mask", "depth"))
  assert schedule_from_mask(mask, config.window, depth) == (True, True, False)
  assert schedule_from_mask(mask, config.window) == (False, False, False)  # counted as answers


@pytest.mark.parametrize("value", [-1, 8, 1.0, True, "1", None])
def test_edge_targets_must_be_an_integer_below_n_min_minus_one(value):
  with pytest.raises(ValueError, match="edge_targets"):
    dataclasses.replace(TASK.preset("small"), edge_targets=value)  # n_min = 9: h = 8 would wrap to x


def test_edge_targets_set_in_a_config_file_reach_the_task():
  from launch import experiment
  from launch.configs import depo_small
  cfg = depo_small.get_config()
  cfg.task_config.edge_targets = 1
  exp = experiment.experiment_from_config(cfg.to_dict())
  assert exp.task_config.edge_targets == 1
  # Unset (a typed placeholder), the task's default: off.
  assert experiment.experiment_from_config(depo_small.get_config().to_dict()).task_config.edge_targets == 0
