"""Test setup: 8 fake CPU devices so that sharding is exercised (must run before jax is imported)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"] if "device_count" in os.environ["XLA_FLAGS"] else (
    os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
    """../shared next to the checkout; tests that need it skip when it is absent (users won't have it)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


def shared_data(shared_dir, name):
    """Path of ../shared/data/NAME; skips the test when that capture is absent."""
    p = pathlib.Path(shared_dir) / "data" / name
    if not p.is_dir():
        pytest.skip(f"real data {p} not found")
    return p


# The heaviest test files first: with `--dist loadfile` (one worker per file, so module-scoped compiled fixtures
# are built once) the two workers then pick the long files early and finish together.
HEAVY_FIRST = ("tests/launch/", "tests/test_colabs.py", "tests/tasks/", "tests/test_export.py", "tests/test_train.py",
               "tests/torch_port/", "tests/models/", "tests/test_sample.py", "tests/configs/", "tests/kernels/")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid
        return next((i for i, prefix in enumerate(HEAVY_FIRST) if path.startswith(prefix)), len(HEAVY_FIRST))

    items.sort(key=rank)  # stable: the order within a file is kept
