"""The README documents every setting, and the CMake flags follow the CPU."""

from __future__ import annotations

from pathlib import Path

from agentloop.adapters.cpu import cmake_args, cpu_flags
from agentloop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"AGENTLOOP_{name.upper()}" not in readme]
    assert missing == [], f"README misses settings: {missing} (run scripts/settings_table.py)"


def test_cmake_args_follow_cpu_flags() -> None:
    avx512 = cmake_args(cpu_flags("flags\t: fpu avx avx2 fma f16c avx512f avx512_vnni amx_tile\n"))
    assert "-DGGML_NATIVE=OFF" in avx512
    assert "-DGGML_AVX512=ON" in avx512 and "-DGGML_AVX512_VNNI=ON" in avx512
    plain = cmake_args(cpu_flags("flags\t: fpu avx avx2 fma\n"))
    assert "-DGGML_AVX2=ON" in plain and "-DGGML_AVX512=OFF" in plain and "-DGGML_F16C=OFF" in plain
    assert "-DGGML_AVX=OFF" in cmake_args(set())
