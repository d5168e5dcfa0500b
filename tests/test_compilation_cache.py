"""The persistent compilation cache that ``python -m scene3d.train`` and the commands that read a run turn on
(scene3d.core.compile_cache, also reachable as scene3d.train.enable_compilation_cache): where it goes for each way of
configuring it, that jax is pointed there, and that a second ``python -m scene3d.evaluate`` in a fresh process
compiles nothing new. No timing here (see RESULTS.md)."""
import os
import subprocess
import sys

import jax
import pytest
from ml_collections import ConfigDict

from configs.common import base_config
from scene3d import train
from scene3d.core import compile_cache


def test_default_is_a_versioned_user_cache_folder():
    got = train.compilation_cache_dir(base_config(), env={})
    want = os.path.join(os.path.expanduser("~"), ".cache", "scene3d", "jax_cache",
                        f"{jax.__version__}-{jax.default_backend()}")
    assert got == want


def test_configured_folder_empty_string_and_env_override(tmp_path):
    config = base_config(compilation_cache_dir=str(tmp_path / "c"))
    assert train.compilation_cache_dir(config, env={}) == str(
        tmp_path / "c" / f"{jax.__version__}-{jax.default_backend()}")
    assert train.compilation_cache_dir(base_config(compilation_cache_dir=""), env={}) is None
    # an already set JAX_COMPILATION_CACHE_DIR wins, as is, even over '' in the config
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "env")}
    assert train.compilation_cache_dir(config, env=env) == str(tmp_path / "env")
    assert train.compilation_cache_dir(base_config(compilation_cache_dir=""), env=env) == str(tmp_path / "env")
    # configs that do not start from base_config get the default
    assert train.compilation_cache_dir(ConfigDict(), env={}).startswith(os.path.expanduser("~/.cache/scene3d/"))


@pytest.fixture
def restore_jax_cache_config():
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)


def test_enable_points_jax_at_the_configured_folder(tmp_path, monkeypatch, restore_jax_cache_config):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    got = train.enable_compilation_cache(base_config(compilation_cache_dir=str(tmp_path)))
    assert got == str(tmp_path / f"{jax.__version__}-{jax.default_backend()}")
    assert jax.config.jax_compilation_cache_dir == got
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
    # off: jax's setting is left alone
    jax.config.update("jax_compilation_cache_dir", None)
    assert train.enable_compilation_cache(base_config(compilation_cache_dir="")) is None
    assert jax.config.jax_compilation_cache_dir is None


def test_tests_never_write_into_the_users_home():
    """conftest.py points every test process at a per-session temporary cache."""
    assert os.environ.get("JAX_COMPILATION_CACHE_DIR")
    assert not os.environ["JAX_COMPILATION_CACHE_DIR"].startswith(os.path.expanduser("~/.cache"))


def test_train_keeps_the_names_of_the_one_home():
    assert train.enable_compilation_cache is compile_cache.enable_compilation_cache
    assert train.compilation_cache_dir is compile_cache.compilation_cache_dir


def _entries(folder) -> set[str]:
    """The compiled programs in a jax cache folder (LRU access-time files left out)."""
    return {p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith("-atime")}


def test_a_second_evaluate_in_a_fresh_process_compiles_nothing_new(tmp_path):
    """``python -m scene3d.evaluate`` turns the cache on from the run's config.json (the folder named there, not the
    environment's): the first process fills it, the second finds every program it needs there."""
    from tests.test_sample import fake_run
    from tests.test_train import tiny_config
    cache = tmp_path / "cache"
    workdir, _ = fake_run(tmp_path / "run", tiny_config(compilation_cache_dir=str(cache)))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program, however small, is stored
    folder = cache / f"{jax.__version__}-{jax.default_backend()}"
    seen = []
    for i in range(2):
        out = tmp_path / f"eval{i}.json"
        r = subprocess.run([sys.executable, "-m", "scene3d.evaluate", f"--workdir={workdir}", "--quiet",
                            f"--out={out}"], env=env, capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert r.returncode == 0 and out.is_file(), r.stderr[-3000:]
        seen.append(_entries(folder))
    assert len(seen[0]) >= 3, seen[0]  # the eval program and the small ones around it
    assert seen[1] == seen[0], sorted(seen[1] - seen[0])  # nothing compiled again
