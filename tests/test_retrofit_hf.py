"""launch.retrofit --from_hf: an imported Hugging Face hybrid becomes a run directory that trains with sleep.

The imported model's logits must survive the round trip through the run
directory unchanged (bit for bit), with and without inserted zero-initialised
GDN blocks: inserted blocks add exactly zero to the residual stream.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from launch import experiment, retrofit
from sleep_jax import load_pretrained
from sleep_jax.model import HybridLM
from sleep_jax.train import checkpoint as ckpt_lib

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "hf", "qwen3_next_gqa")


def _forward(model, tokens):
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t)[0])(state, tokens))


def _restore(out):
  """The model launch.train / launch.eval build from the run directory, with its checkpoint's parameters."""
  exp = experiment.experiment_from_config(experiment.load_run_config(out))
  model = HybridLM(exp.model, rngs=nnx.Rngs(0))
  abstract = nnx.split(nnx.eval_shape(lambda: HybridLM(exp.model, rngs=nnx.Rngs(0))), nnx.Param, ...)[1]
  nnx.update(model, ckpt_lib.load_params(out, abstract))
  return exp, model


@pytest.fixture(scope="module")
def imported():
  model = load_pretrained(FIXTURE)
  tokens = np.load(os.path.join(FIXTURE, "reference.npz"))["tokens"]
  return model, tokens, _forward(model, tokens)


@pytest.mark.parametrize("insert", [(), (2,)])
def test_run_directory_keeps_the_imported_logits(tmp_path, imported, insert):
  model, tokens, logits = imported
  out = str(tmp_path / "run")
  r = retrofit.retrofit_hf(FIXTURE, out, task="rule110", positions=insert)
  assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "config.py", "retrofit.json"]
  assert r.positions == tuple(insert) and len(r.layout) == 4 + len(insert)
  exp, restored = _restore(out)
  assert exp.model == restored.config and exp.model.vocab_size == model.config.vocab_size
  assert exp.sleep.n_passes == 1 and exp.train.init_from == out
  for name in ("attn_output_gate", "attn_qk_norm", "norm_zero_centered", "n_kv_heads", "gdn_n_key_heads",
               "rope_fraction", "tie_embeddings"):
    assert getattr(exp.model, name) == getattr(model.config, name), name
  np.testing.assert_array_equal(_forward(restored, tokens), logits)
  meta = json.loads((tmp_path / "run" / "retrofit.json").read_text())
  assert meta["source_format"] == "huggingface" and meta["positions"] == list(insert)


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert retrofit.run_hf(str(tmp_path / "missing"), str(tmp_path / "out")) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "no such directory" in err and "\n" not in err
  moe = tmp_path / "moe"
  shutil.copytree(FIXTURE, moe)
  cfg = json.loads((moe / "config.json").read_text())
  cfg.update(num_experts=8, mlp_only_layers=[])
  (moe / "config.json").write_text(json.dumps(cfg))
  assert retrofit.run_hf(str(moe), str(tmp_path / "out")) == 1
  err = capsys.readouterr().err.strip()
  assert "num_experts=8" in err and "\n" not in err
  # gsm_math's tokenizer has 111 ids, the fixture's vocabulary 61.
  assert retrofit.run_hf(FIXTURE, str(tmp_path / "out"), task="gsm_math") == 1
  err = capsys.readouterr().err.strip()
  assert "vocabulary (61)" in err and "gsm_math" in err
  assert not os.path.exists(tmp_path / "out" / "checkpoints")


@pytest.mark.slow
def test_launch_train_fine_tunes_it_with_sleep(tmp_path):
  """One launch.train step at N = 2 from the written run directory (what the end-to-end run does for 300)."""
  out = str(tmp_path / "run")
  retrofit.retrofit_hf(FIXTURE, out, task="rule110", positions=(2,))
  cfg = experiment.apply_overrides(experiment.load_run_config(out).to_dict(), [
      "sleep.n_passes=2", "train.num_steps=1", "train.batch_size=2", "train.num_devices=1",
      "train.eval_batches=1", "train.progress=False", "train.log_every=1"])
  result = experiment.run(cfg, str(tmp_path / "train"))
  assert result.step == 1 and np.isfinite(result.last_train["loss"])
