"""Test configuration: four fake CPU devices, set before jax initialises."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The public API's jaxtyping annotations are checked at run time in the tests (sleep_jax/array_typing.py;
# beartype is in the test extra), so an annotation that misstates a shape fails here. SLEEP_JAX_TYPECHECK=0
# turns the checks off. Subprocesses (the launch CLIs) inherit it.
os.environ.setdefault("SLEEP_JAX_TYPECHECK", "1")

# Property tests (tests/test_fuzz.py): few examples by default, many in the
# slow-marked duplicates. HYPOTHESIS_PROFILE=slow makes every property test use
# the slow profile.
try:
  from hypothesis import settings
except ImportError:  # hypothesis is a test extra; only test_fuzz.py needs it.
  settings = None
if settings is not None:
  settings.register_profile("fast", max_examples=10, deadline=None, print_blob=True)
  settings.register_profile("slow", max_examples=200, deadline=None, print_blob=True)
  settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# JAX's persistent compilation cache, shared with the launch CLIs (launch/cli.py),
# so a second test run (and every CLI subprocess, which inherits the
# environment) loads compiled executables instead of compiling them again.
# SLEEP_JAX_COMPILATION_CACHE="" turns it off.
_cache_dir = os.environ.get("SLEEP_JAX_COMPILATION_CACHE", os.path.join("~", ".cache", "sleep_jax", "jax"))
if _cache_dir:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(os.path.expanduser(_cache_dir)))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
