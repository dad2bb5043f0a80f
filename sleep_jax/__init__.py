"""sleep_jax: offline recurrent consolidation ("sleep") for hybrid language models.

A hybrid model alternates attention and Gated DeltaNet blocks. Before a window
of ``L`` tokens leaves the attention cache, the model runs ``N`` offline passes
over it, each refining the hidden states and writing into the GDN fast weights;
then only the fast weights survive. Prediction stays one ordinary forward pass.

Public API:
  * ``ModelConfig``, ``SleepConfig``: frozen, validated configuration.
  * ``ops.gated_delta_rule`` / ``ops.gated_delta_step``: the fast-weight update.
  * ``HybridLM``: the Flax NNX model; ``FastWeights`` / ``init_fast_weights``.
  * ``protocol`` / ``SleepableModel`` / ``check_sleepable``: what any model needs
    to provide for the windowed forward, the trainer and serving (``HybridLM``
    is one implementation; ``sleep_jax.examples.own_model`` another);
    ``nn.GatedDeltaNet`` / ``nn.Attention``: building blocks for one's own.
  * ``run_window``: one window's wake pass and sleep, for any sleepable model.
  * ``sleep_consolidate``: N passes as one ``lax.scan`` over any blocks function (NNX
    modules with RNG streams included); returns a ``SleepResult``.
  * ``windowed_forward`` / ``windowed_loss``: training through eviction
    (Algorithm 1 of the paper), hard or sliding.
  * ``SleepSession``: wake-time streaming inference with constant latency;
    greedy or sampled (``sample_tokens``), prompts of different lengths.
  * ``load_pretrained``: a Hugging Face Qwen3-Next-style hybrid as a
    ``HybridLM`` (``sleep_jax.pretrained``).
  * ``array_typing``: the axis legend and jaxtyping aliases the API is
    annotated with; ``array_typing.enable_runtime_checks()`` (or
    ``SLEEP_JAX_TYPECHECK=1``) checks the annotations at run time.
  * ``sleep_jax.train``: optimizer, trainer, checkpoints (imported on demand).
"""
from sleep_jax import array_typing, nn, ops, protocol
from sleep_jax.config import ModelConfig, SleepConfig
from sleep_jax.consolidate import SleepResult, sleep_consolidate
from sleep_jax.fast_weights import FastWeights, init_fast_weights
from sleep_jax.model import HybridLM
from sleep_jax.pretrained import load_pretrained
from sleep_jax.retrofit import insert_gdn_blocks, with_passes
from sleep_jax.protocol import SleepableModel, check_sleepable
from sleep_jax.session import SessionState, SessionStats, SleepSession, sample_tokens
from sleep_jax.windowed import (LossAux, WindowedLoss, WindowedOutput, run_window, schedule_from_mask,
                                serving_schedule, windowed_forward, windowed_loss)

__all__ = [
    "FastWeights",
    "HybridLM",
    "LossAux",
    "ModelConfig",
    "SessionState",
    "SessionStats",
    "SleepConfig",
    "SleepResult",
    "SleepSession",
    "SleepableModel",
    "WindowedLoss",
    "WindowedOutput",
    "array_typing",
    "check_sleepable",
    "init_fast_weights",
    "insert_gdn_blocks",
    "load_pretrained",
    "nn",
    "ops",
    "protocol",
    "run_window",
    "sample_tokens",
    "schedule_from_mask",
    "serving_schedule",
    "sleep_consolidate",
    "train",
    "windowed_forward",
    "windowed_loss",
    "with_passes",
]
__version__ = "0.1.0"


def __getattr__(name):
  # The trainer pulls in optax, orbax and grain; import it on first use so that
  # `import sleep_jax` stays light for users who only compose the model.
  if name == "train":
    import importlib
    return importlib.import_module("sleep_jax.train")
  raise AttributeError(f"module 'sleep_jax' has no attribute {name!r}")
