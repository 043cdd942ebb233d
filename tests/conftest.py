import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Triton decides interpreted-vs-compiled when a kernel module is first imported; without a GPU every
# Triton kernel must run under the interpreter, whichever test module happens to import it first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; tests that need it skip with a reason when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing")
    return SHARED_DATA


def pytest_report_header() -> str:
    """Which control-plane modules this run uses (`mtbench/compiled.py`): compiled, pure or stale."""
    from mtbench.compiled import summary

    return "mtbench compiled core: " + summary()
