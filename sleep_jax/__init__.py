"""sleep_jax: offline recurrent consolidation ("sleep") for hybrid language models."""
from sleep_jax import ops
from sleep_jax.config import ModelConfig, SleepConfig

__all__ = ["ModelConfig", "SleepConfig", "ops"]
__version__ = "0.1.0"
