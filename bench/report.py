"""What every benchmark writes beside its figures: the machine, the code measured, and
its own section of bench/RESULTS.md (between `<!-- name:start -->` and `<!-- name:end -->`)."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0))
    return (
        f"nproc {nproc}, {cpu}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}"
    )


def git_head(*paths: str) -> tuple[str, list[str]]:
    """("<short hash> <subject>", the paths under `paths` with uncommitted changes);
    ("unknown", []) where git cannot tell."""
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
            ).stdout.rstrip("\n")

        head = git("log", "-1", "--format=%h %s")
        dirty = [line[3:] for line in git("status", "--porcelain", "--", *paths).splitlines()]
    except OSError:
        return "unknown", []
    return head or "unknown", dirty


def git_state() -> str:
    head, dirty = git_head("gateway", "bench")
    return f"`{head[:90]}`" + (f"; uncommitted: {', '.join(dirty[:8])}" if dirty else "")


def command_line(script: str) -> str:
    """How this run was started, as a copy-paste command from the repository root."""
    return shlex.join([".venv/bin/python", f"bench/{script}", *sys.argv[1:]])


def write_section(name: str, block: str) -> None:
    """Replace (or append) this benchmark's section of bench/RESULTS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{block.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")
