"""The CPU features llama.cpp cares about, read from /proc/cpuinfo, and the CMake options a CPU build needs.

Standard library only: scripts/llama_cmake_args.py loads this file by path before agentloop is installed.
GGML_NATIVE=ON segfaults in the AMX kernels on some hosts (llama.cpp issue 20824), so native is always off.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

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

# Reported for diagnosis only: AMX is left off whatever the CPU says (see the module docstring).
RELEVANT_FLAGS: tuple[str, ...] = (*FLAG_OPTIONS, "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd")


def cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cmake_args(flags: set[str]) -> str:
    options = [
        "-DGGML_NATIVE=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_CURL=OFF",
    ]
    options += [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in FLAG_OPTIONS.items()]
    return " ".join(options)


def read_cpu_flags(path: Path = CPUINFO) -> set[str]:
    """This machine's CPU flags; empty where /proc/cpuinfo does not exist (macOS, Windows)."""
    return cpu_flags(path.read_text()) if path.exists() else set()


def relevant_flags(flags: set[str]) -> list[str]:
    """The flags llama.cpp's CPU kernels care about, in a stable order."""
    return [flag for flag in RELEVANT_FLAGS if flag in flags]
