"""The glibc allocator setting the runner applies (benchmark.engine.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "from benchmark.engine.allocator import keep_freed_memory as k; "
    "import benchmark.engine.allocator as a; print(k(), k(), a._done)"
)


def probe(**env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuned_once_per_process_and_can_be_turned_off():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert probe() == "True True True"
    assert probe(BENCHMARK_MALLOC="default") == "False False False"
    assert probe(BENCHMARK_MALLOC=" Default ") == "False False False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_memory_is_handed_back_between_models():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    code = (
        "import torch; from benchmark.engine.allocator import keep_freed_memory, release_freed_memory\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "keep_freed_memory(); base = rss()\n"
        "x = torch.ones(512 << 20, dtype=torch.uint8); held = rss(); del x\n"
        "kept = rss(); release_freed_memory(); back = rss()\n"
        "print(held - base > 400e6, kept - base > 400e6, back - base < 100e6)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["True", "True", "True"]  # kept for reuse, then released
