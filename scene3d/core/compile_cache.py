"""The persistent JAX compilation cache every command turns on: compiled XLA programs kept between processes.

``python -m scene3d.train`` and the commands that read a run (``scene3d.evaluate``, ``scene3d.sample``,
``scene3d.reconstruct``, ``scene3d.export``) call ``enable_compilation_cache(config)`` first thing, before anything
compiles (jax decides once per process whether a cache is used), with the training config (the commands: the run's
``config.json``), so a second invocation on the same run loads the train step, the eval programs, the sampler's and
the renderer's programs from disk instead of compiling them again.

- ``compilation_cache_dir(config, env)``: the folder, or None (off): an already set ``JAX_COMPILATION_CACHE_DIR``
  as is; else ``config.compilation_cache_dir`` (default ``~/.cache/scene3d/jax_cache``; empty: off) plus a
  ``<jax version>-<backend>`` subfolder.
- ``enable_compilation_cache(config)``: points jax there and returns the folder; ``enable_for_run(workdir)``: the
  same with a run's ``config.json`` (what the commands that read a run call).
"""
from __future__ import annotations

import json
import os

import jax

DEFAULT_COMPILATION_CACHE_DIR = "~/.cache/scene3d/jax_cache"


def compilation_cache_dir(config, env=None) -> str | None:
    """Where this process keeps compiled XLA programs between processes, or None (off).

    An already set ``JAX_COMPILATION_CACHE_DIR`` wins and is used as is (tests, launchers and users who pin one
    folder). Otherwise ``config.compilation_cache_dir`` (default ``~/.cache/scene3d/jax_cache``; empty string: off)
    with a ``<jax version>-<backend>`` subfolder, so that an upgraded jax or another backend never reads entries
    that a different compiler wrote (jax's cache keys include the version too; the folder keeps the old ones apart
    and easy to delete)."""
    env = os.environ if env is None else env
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return env["JAX_COMPILATION_CACHE_DIR"]
    base = config.get("compilation_cache_dir", DEFAULT_COMPILATION_CACHE_DIR)
    if not base:
        return None
    return os.path.join(os.path.expanduser(str(base)), f"{jax.__version__}-{jax.default_backend()}")


def enable_compilation_cache(config) -> str | None:
    """Turn on jax's persistent compilation cache for this process (before anything compiles) and return its
    folder: a second run of the same config loads the train step, the sharded init and the eval programs instead of
    compiling them again. Only programs that took at least a second to compile are stored (the many small ones
    cost more to look up than to build), unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` says otherwise."""
    directory = compilation_cache_dir(config)
    if directory is None:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return directory


def enable_for_run(workdir) -> str | None:
    """``enable_compilation_cache`` with the config of the run in ``workdir`` (its ``config.json``); a run without
    a readable config.json gets the default folder (the command itself then reports the missing or broken file)."""
    from scene3d.core import runs
    try:
        with open(runs.config_path(workdir)) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = {}
    return enable_compilation_cache(cfg if isinstance(cfg, dict) else {})
