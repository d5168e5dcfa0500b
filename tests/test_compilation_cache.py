"""The persistent compilation cache that ``python -m scene3d.train`` turns on (scene3d.train.enable_compilation_cache):
where it goes for each way of configuring it, and that jax is pointed there. No timing here (see RESULTS.md)."""
import os

import jax
import pytest
from ml_collections import ConfigDict

from configs.common import base_config
from scene3d import train


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
