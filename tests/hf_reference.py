r"""Builds the Hugging Face reference fixtures that ``tests/test_pretrained.py`` checks the importer against.

  pip install torch transformers safetensors numpy     # the optional extra `hf` (not needed by sleep_jax)
  python tests/hf_reference.py --out=tests/data/hf     # rewrites the committed fixtures

Each fixture is a tiny randomly initialised transformers ``Qwen3NextForCausalLM``
with dense MLPs (``mlp_only_layers`` = every layer), both layer types, odd head
counts and grouped heads, saved with ``save_pretrained`` (``config.json`` and
``*.safetensors``; one fixture sharded with an index file), plus
``reference.npz``:

* ``tokens [B, T]`` int32: a fixed token batch;
* ``logits [B, T, V]`` float32: the reference's full forward;
* ``logits_float64 [B, T, V]``: the same model run in float64, the yardstick
  that both float32 implementations' rounding is measured against;
* ``prompt_len`` and ``decode_logits [B, T - prompt_len, V]``: the reference
  fed the first ``prompt_len`` tokens at once, then one token at a time
  through its cache (its recurrent decode path);
* ``gdn_state_<i> [B, Hv, Dk, Dv]``: layer ``i``'s Gated DeltaNet recurrent
  state after the batch (the reference's cache);
* ``attn_key_<i>`` / ``attn_value_<i> [B, Hkv, T, Dh]``: layer ``i``'s
  attention cache after the batch (keys after RoPE).

Every parameter is perturbed away from the reference's initial values (zero
norm offsets, unit ``dt_bias``) so that a wrong mapping of any tensor shows in
the logits. The reference runs in float32 on CPU with its plain-torch gated
delta rule and convolution (flash-linear-attention absent).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

# Each fixture: the transformers config fields, whether to shard, and the token batch shape.
FIXTURES = {
    # GQA 3 query heads over 1 key/value head, partial rotary 1/4 (rope_dim 4 of 16); GDN 1 key head over
    # 3 value heads (grouped values), Dk != Dv; untied; GDN first, as in Qwen3-Next.
    "qwen3_next_gqa": dict(
        config=dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=4,
                    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
                    num_attention_heads=3, num_key_value_heads=1, head_dim=16, partial_rotary_factor=0.25,
                    linear_num_key_heads=1, linear_num_value_heads=3, linear_key_head_dim=8,
                    linear_value_head_dim=6, linear_conv_kernel_dim=4, tie_word_embeddings=False),
        shard=False, batch=(2, 23), seed=0),
    # Tied embeddings, 5 query heads and 5 key/value heads (no grouping), rope half the head, 5 GDN key and
    # value heads, attention first, conv width 3; saved in four shards with an index file.
    "qwen3_next_tied_sharded": dict(
        config=dict(vocab_size=53, hidden_size=20, intermediate_size=28, num_hidden_layers=3,
                    layer_types=["full_attention", "linear_attention", "linear_attention"],
                    num_attention_heads=5, num_key_value_heads=5, head_dim=8, partial_rotary_factor=0.5,
                    linear_num_key_heads=5, linear_num_value_heads=5, linear_key_head_dim=4,
                    linear_value_head_dim=4, linear_conv_kernel_dim=3, tie_word_embeddings=True),
        shard=True, batch=(3, 17), seed=1),
}


# Tokens the reference decodes one at a time after the prompt (the rest of the batch).
DECODE_TOKENS = 5


def build_model(spec: dict):
  """The transformers model of a fixture spec, randomly initialised and perturbed (float32, eval mode)."""
  import torch
  from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

  torch.manual_seed(spec["seed"])
  fields = dict(spec["config"])
  rope = dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=fields.pop("partial_rotary_factor"))
  n = fields["num_hidden_layers"]
  cfg = Qwen3NextConfig(**fields, rope_parameters=rope, mlp_only_layers=list(range(n)), num_experts=0,
                        rms_norm_eps=1e-6, hidden_act="silu", initializer_range=0.2, attention_bias=False)
  model = Qwen3NextForCausalLM(cfg).float().eval()
  g = torch.Generator().manual_seed(1000 + spec["seed"])
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith("dt_bias"):
        p.add_(0.3 * torch.randn(p.shape, generator=g))
  return model


def reference_outputs(model, tokens: np.ndarray) -> dict[str, np.ndarray]:
  """The reference's logits, GDN states and attention caches for ``tokens``."""
  import torch

  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long), use_cache=True)
  res = {"tokens": tokens.astype(np.int32), "logits": out.logits.float().numpy()}
  prompt_len = tokens.shape[1] - DECODE_TOKENS
  with torch.no_grad():
    step = model(input_ids=torch.as_tensor(tokens[:, :prompt_len], dtype=torch.long), use_cache=True)
    cache_d = step.cache if hasattr(step, "cache") else step.past_key_values
    decoded = []
    for t in range(prompt_len, tokens.shape[1]):
      step = model(input_ids=torch.as_tensor(tokens[:, t:t + 1], dtype=torch.long), cache=cache_d, use_cache=True)
      cache_d = step.cache if hasattr(step, "cache") else step.past_key_values
      decoded.append(step.logits[:, -1].float().numpy())
  res["prompt_len"] = np.int32(prompt_len)
  res["decode_logits"] = np.stack(decoded, axis=1)
  cache = out.cache if hasattr(out, "cache") else out.past_key_values
  for i, kind in enumerate(model.config.layer_types):
    if kind == "linear_attention":
      res[f"gdn_state_{i}"] = cache.get_recurrent_state(i).float().numpy()
    else:
      layer = cache.layers[i]
      res[f"attn_key_{i}"] = layer.keys.float().numpy()
      res[f"attn_value_{i}"] = layer.values.float().numpy()
  with torch.no_grad():
    res["logits_float64"] = model.double()(input_ids=torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  model.float()
  return res


def fixture_tokens(spec: dict, vocab_size: int) -> np.ndarray:
  b, t = spec["batch"]
  return np.random.default_rng(spec["seed"]).integers(0, vocab_size, size=(b, t)).astype(np.int32)


def write_fixture(name: str, out_dir: str) -> str:
  """Builds fixture ``name`` and writes it to ``out_dir/name``; returns that directory."""
  spec = FIXTURES[name]
  model = build_model(spec)
  path = os.path.join(out_dir, name)
  os.makedirs(path, exist_ok=True)
  for f in os.listdir(path):
    if f.endswith(".safetensors") or f.endswith(".json") or f.endswith(".npz"):
      os.remove(os.path.join(path, f))
  # 20 KB shards split the sharded fixture into several files with an index.
  model.save_pretrained(path, safe_serialization=True, max_shard_size="20KB" if spec["shard"] else "50MB")
  for extra in ("generation_config.json",):
    if os.path.exists(os.path.join(path, extra)):
      os.remove(os.path.join(path, extra))
  tokens = fixture_tokens(spec, model.config.vocab_size)
  np.savez_compressed(os.path.join(path, "reference.npz"), **reference_outputs(model, tokens))
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "hf"))
  parser.add_argument("--only", default="", help="comma-separated fixture names (default: all)")
  args = parser.parse_args()
  names = [n for n in args.only.split(",") if n] or list(FIXTURES)
  for name in names:
    path = write_fixture(name, args.out)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    files = sorted(os.listdir(path))
    print(f"{name}: {size / 1024:.1f} KB in {path}: {', '.join(files)}")
    with open(os.path.join(path, "config.json")) as f:
      json.load(f)


if __name__ == "__main__":
  main()
