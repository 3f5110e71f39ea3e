"""Print CMAKE_ARGS for a llama-cpp-python CPU build, chosen from the CPU flags this machine reports.

GGML_NATIVE=ON segfaults in the AMX kernels on some hosts (llama.cpp issue 20824), so native is always off
and each instruction set is enabled only when /proc/cpuinfo lists it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# cpuinfo flag -> ggml CMake option
FLAG_OPTIONS: dict[str, str] = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx512f": "GGML_AVX512",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx_vnni": "GGML_AVX_VNNI",
}


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str]) -> str:
    options = ["-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF"]
    options += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in FLAG_OPTIONS.items()]
    return " ".join(options)


def main() -> int:
    path = Path("/proc/cpuinfo")
    flags = cpu_flags(path.read_text()) if path.exists() else set()
    print(cmake_args(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
