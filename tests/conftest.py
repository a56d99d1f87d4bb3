"""Test-suite settings, and the `--device` option of the device-independent tests.

`pytest --device cuda -m device` runs the tests marked `device` (tests/test_device.py) on a GPU;
the default, `--device cpu`, runs them on the CPU with the rest of the suite. A device that is
not there (`--device cuda` without CUDA) skips those tests instead of failing them.
"""

from __future__ import annotations

import os

import pytest
import torch

# The tests use small tensors, where one thread is as fast as two; and with two OpenMP threads a
# test slows down many times over whenever the other core is busy (a subprocess, another job).
torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        help="torch device of the tests marked `device` (default: cpu), e.g. cuda, cuda:0, mps; "
        "run just them with `pytest --device cuda -m device`",
    )


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("--device")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as error:  # a typo, not a missing device: say so
        raise pytest.UsageError(f"--device {value!r} is not a torch device: {error}") from None
    if device.type == "cuda":
        # Deterministic cuBLAS (the exact-resume test): read when cuBLAS is first used, so set
        # before any test touches CUDA. Only the workspace size; results are as without it.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _unavailable(device: torch.device) -> str | None:
    """Why `device` cannot be used here (None: it can)."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available (torch.cuda.is_available() is False)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{device} does not exist: {count} CUDA device(s)"
        return None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            return "MPS is not available (torch.backends.mps.is_available() is False)"
        return None
    try:  # any other backend: usable if a tensor can be made on it
        torch.empty(1, device=device)
    except Exception as error:  # noqa: BLE001 - whatever the backend raises, it is not usable
        return f"{device} is not usable: {type(error).__name__}: {error}"
    return None


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The `--device` of this run (default cpu); skips the test when it is not available."""
    device = torch.device(pytestconfig.getoption("--device"))
    reason = _unavailable(device)
    if reason is not None:
        pytest.skip(f"--device {device}: {reason}")
    return device
