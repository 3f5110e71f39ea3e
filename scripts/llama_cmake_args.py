"""Print CMAKE_ARGS for a llama-cpp-python CPU build chosen from this machine's CPU flags.

Runs before agentloop is installed, so it loads src/agentloop/adapters/cpu.py (standard library only) by path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CPU_MODULE = Path(__file__).resolve().parents[1] / "src" / "agentloop" / "adapters" / "cpu.py"


def main() -> int:
    spec = importlib.util.spec_from_file_location("agentloop_cpu", CPU_MODULE)
    assert spec is not None and spec.loader is not None
    cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu)
    print(cpu.cmake_args(cpu.read_cpu_flags()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
