"""Benchmarks, printed side by side in one run: ``python -m launch.bench NAME [args]``.

Each NAME is a module ``launch.benchmarks.NAME`` with a ``main(argv)``
function. Benchmarks print ratios measured in the same process, never absolute
targets asserted in tests.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

import launch.benchmarks


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(launch.benchmarks.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
  names = available()
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(__doc__)
    print("available:", ", ".join(names) or "(none)")
    return 0 if len(argv) >= 2 else 2
  name = argv[1]
  if name not in names:
    print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
    return 2
  module = importlib.import_module(f"launch.benchmarks.{name}")
  return int(module.main(argv[2:]) or 0)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
