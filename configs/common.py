"""Trainer fields every experiment config starts from (each config file still holds the whole experiment)."""
from ml_collections import ConfigDict

from scene3d.core.sharding import DEFAULT_RULES


def base_config(**overrides) -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.global_batch_size = 256
    c.total_steps = 100_000
    # AdamW, linear warmup then cosine (or constant); clipping; steps with a non-finite or larger gradient norm
    # than skip_grad_norm are skipped and counted (0 disables the size test).
    c.optim = dict(lr=1e-4, warmup_steps=1000, schedule="cosine", end_lr_factor=0.0, weight_decay=0.0,
                   b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, skip_grad_norm=0.0)
    # A run stops (exit status 1) once this many steps in a row were skipped: nothing is being learned (0: never).
    c.max_skipped_steps = 100
    c.ema_decay = 0.9999  # 0 disables EMA; evaluation uses EMA params when present
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding = dict(rules=[list(r) for r in DEFAULT_RULES])
    c.log_every = 100
    c.ckpt_every = 5000
    c.keep_ckpts = 3
    c.async_checkpoint = True
    c.eval_every = 5000
    c.eval_batches = 4
    c.eval_batch_size = 256
    c.write_images = True
    # Persistent XLA compilation cache (a <jax version>-<backend> subfolder of it; '' turns it off; an already set
    # JAX_COMPILATION_CACHE_DIR wins): a second run of the same config skips most of its compile time.
    c.compilation_cache_dir = "~/.cache/scene3d/jax_cache"
    c.preempt_at_step = 0  # testing only: SIGKILL the process at this step to simulate a preemption
    c.preempt_in_save_at_step = 0  # testing only: SIGKILL while saving this step (files written, not yet sealed)
    c.update(overrides)
    return c
