"""Where the demo's files and programs are, and how it names them to the reader."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
BASE_CONFIG = ROOT / "config" / "gateway.toml"
DEMO_POLICY = ROOT / "policies" / "demo.csv"


def venv_bin(name: str) -> Path:
    # Not resolved: a venv's python is a symlink, and its scripts live beside the link.
    return Path(sys.executable).with_name(name)


def display(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(ROOT))
    except ValueError:
        return str(path)
