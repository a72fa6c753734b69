"""Where the real data sets live, and the skip when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_DATA = REPO.parent / "shared" / "data" / "real"


def real_data_or_skip() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data sets not present at {REAL_DATA} (they live in ../shared/data/real)")
    return REAL_DATA
