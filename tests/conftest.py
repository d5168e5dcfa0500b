"""Test setup: 8 fake CPU devices so that sharding is exercised (must run before jax is imported)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["XLA_FLAGS"] = os.environ["XLA_FLAGS"] if "device_count" in os.environ["XLA_FLAGS"] else (
    os.environ["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# XLA:CPU compilation is most of this suite's time (tiny shapes: every program runs in milliseconds), and LLVM's
# optimisation passes are half of a compile: the tests build unoptimised CPU code. Same HLO and the same XLA passes;
# set xla_backend_optimization_level yourself in XLA_FLAGS to test optimised code.
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
# One persistent compilation cache per test session, shared by the xdist workers (they inherit this environment):
# a program that several tests (or a task's per-seed loop) compile again is compiled once. A fresh folder every
# session, removed at the end; an explicitly set JAX_COMPILATION_CACHE_DIR is used as is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="scene3d_tests_jax_cache_")
    os.environ["SCENE3D_TESTS_OWN_JAX_CACHE"] = str(os.getpid())
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

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
HEAVY_FIRST = ("tests/launch/", "tests/convert/", "tests/release/", "tests/test_colabs.py", "tests/tasks/",
               "tests/test_gpu_check.py", "tests/metrics/", "tests/losses/",
               "tests/tools/", "tests/test_release.py", "tests/test_export.py", "tests/test_train.py",
               "tests/test_can3tok_variants.py", "tests/torch_port/", "tests/models/", "tests/test_sample.py",
               "tests/test_evaluate.py", "tests/test_reconstruct.py", "tests/data/", "tests/configs/",
               "tests/kernels/")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid
        return next((i for i, prefix in enumerate(HEAVY_FIRST) if path.startswith(prefix)), len(HEAVY_FIRST))

    items.sort(key=rank)  # stable: the order within a file is kept


def pytest_unconfigure(config):
    """Remove the session's compilation cache (in the process that created it: xdist's controller or a plain run)."""
    if os.environ.get("SCENE3D_TESTS_OWN_JAX_CACHE") == str(os.getpid()):
        import shutil
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
