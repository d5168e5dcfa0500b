"""configs/dit3d.py beyond runlocal: the card variants (dino2 | dino2-256 | siglip2: the released token spaces, K x 768)
built abstractly (nnx.eval_shape / jax.eval_shape: no allocation) with their abstract loss and sample shapes; the
dimension-dependent time shift reaching the training times and the sampler (numpy reference); target tokens encoded
from 16 views of a clip with the tiny runlocal config, the conditions from their own (fewer) views."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d import tasks
from scene3d.core.config import load_config
from scene3d.diffusion.timesteps import TimeSampler
from scene3d.tasks import dit3d as dit3d_task

CONFIG = "configs/dit3d.py"
CARDS = {"dino2": ("dinov2-B", 1024, 224), "dino2-256": ("dinov2-B", 256, 224), "siglip2": ("siglip2-B", 256, 256)}


def _abstract_batch(b, vc, vt, res):
    s = jax.ShapeDtypeStruct
    out = {}
    for part, v in (("context", vc), ("target", vt)):
        out.update({f"{part}_images": s((b, v, res, res, 3), jnp.float32), f"{part}_c2w": s((b, v, 4, 4), jnp.float32),
                    f"{part}_intrinsics": s((b, v, 4), jnp.float32), f"{part}_points": s((b, v, res, res, 3),
                                                                                        jnp.float32),
                    f"{part}_mask": s((b, v, res, res), jnp.bool_)})
    return out


@pytest.mark.parametrize("card", sorted(CARDS))
def test_card_builds_abstractly_with_loss_and_sample_shapes(card):
    encoder, k, res = CARDS[card]
    config = load_config(f"{CONFIG}:card={card}")
    tm = config.tokenizer.model
    assert (tm.encoder, tm.num_tokens, tm.latent_dim) == (encoder, k, 768)  # the tower's width, not a projection
    assert tuple(config.data.views.resolution) == (res, res)
    task = tasks.get_task(config)
    assert task.tokenizer.token_shape == (k, 768)
    # the time shift sqrt(N * C / 4096), in training and sampling
    s = math.sqrt(k * 768 / 4096)
    assert task.time_shift == pytest.approx(s) and task.flow.sample_shift == pytest.approx(s)
    assert task.flow.time_sampler.shift == pytest.approx(s)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    dit = model.dit
    assert dit.dim >= 768 and dit.num_tokens == k and dit.latent_dim == 768
    assert dit.final is None and (dit.head.width, dit.head.depth) == (2048, 2)  # DiT^DH-XL: the wide head
    n_dit = sum(x.size for x in jax.tree.leaves(nnx.state(dit, nnx.Param)))
    n_head = sum(x.size for x in jax.tree.leaves(nnx.state(dit.head, nnx.Param)))
    assert 600e6 < n_dit < 1.2e9 and n_head > 100e6  # XL trunk (~0.7 B with cross-attention) + 2 blocks at 2048
    assert not jax.tree.leaves(nnx.state(model.rae, nnx.Param))  # the 3DRAE is frozen
    vc, vt = config.data.views.num_context, config.data.views.num_target
    batch = _abstract_batch(1, vc, vt, res)
    loss, metrics = jax.eval_shape(lambda m, b: task.loss(m, b, jax.random.key(0)), model, batch)
    assert loss.shape == () and metrics["loss_views"].shape == ()
    assert config.cond.num_views == 4 and task.cond_views == 4  # conditions from 4 of the 8 context views

    def sample(m, b):
        b = task.cond_batch(b)
        cond = task.cond(m, b, *task._masks(b, "views_trajectory"))
        assert cond["view_features"].shape == (1, 4, res // 16 if encoder.startswith("siglip") else res // 14,
                                               res // 16 if encoder.startswith("siglip") else res // 14, 768)
        return task.sample(m, cond, jax.random.key(0), batch_size=1, num_steps=2)

    tokens = jax.eval_shape(sample, model, batch)
    assert tokens.shape == (1, k, 768)


def _tiny(arg, **over):
    config = load_config(f"{CONFIG}:{arg}")
    config.tokenizer.model.update(num_tokens=8, dim=32, dec_dim=32, dec_depth=1)
    config.model.update(dim=32, depth=1)
    for key, value in over.items():
        node, *path = key.split(".")
        target = config[node]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return config


def test_time_shift_in_training_times_and_sampler():
    config = _tiny("runlocal,time_shift=dim")
    task = tasks.get_task(config)
    n, c = task.tokenizer.token_shape
    s = math.sqrt(n * c / 4096)
    assert task.time_shift == pytest.approx(s) and task.flow.sample_shift == pytest.approx(s)
    # training times: the configured sampler's draws, shifted by the numpy formula
    x0 = jnp.zeros((512, n, c))
    t, _, _ = task.flow.draw(x0, jax.random.key(3), jax.random.key(4))
    base = np.asarray(TimeSampler.from_spec(config.flow.time_sampler)(jax.random.key(3), (512,)), np.float64)
    np.testing.assert_allclose(t, s * base / (1 + (s - 1) * base), rtol=1e-5, atol=1e-6)
    # sampling: the Euler grid from t = 1 (noise) is the shifted uniform grid; v = 1 spells it out
    steps = 5
    _, traj = task.flow.sample(lambda x, tt: jnp.ones_like(x), jnp.zeros((1, 2)), num_steps=steps,
                               return_trajectory=True)
    g = np.linspace(1.0, 0.0, steps + 1)
    np.testing.assert_allclose(np.asarray(traj)[:, 0, 0], s * g / (1 + (s - 1) * g) - 1.0, rtol=1e-5, atol=1e-5)
    # off by default outside the cards; a flow section with its own shift is refused
    assert tasks.get_task(_tiny("runlocal")).time_shift == 1.0
    with pytest.raises(ValueError, match="config.flow"):
        tasks.get_task(_tiny("runlocal,time_shift=dim", **{"flow.sample_shift": 2.0}))


def test_spread_views():
    np.testing.assert_array_equal(dit3d_task.spread_views(16, 2), [0, 15])
    np.testing.assert_array_equal(dit3d_task.spread_views(16, 4), [0, 5, 10, 15])
    np.testing.assert_array_equal(dit3d_task.spread_views(5, 0), np.arange(5))
    np.testing.assert_array_equal(dit3d_task.spread_views(5, 9), np.arange(5))


def test_tokens_from_16_views_conditions_from_fewer():
    config = _tiny("runlocal,views=16")
    assert config.data.views.num_context == 16 and config.tokenizer.num_views == 16 and config.cond.num_views == 2
    task = tasks.get_task(config)
    model = task.build_model(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, vc, vt, res = 2, 16, 2, 28
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, vc + vt, 1, 1))
    c2w[..., :3, 3] = rng.normal(size=(b, vc + vt, 3)) * 0.3
    batch = {}
    for part, sl, v in (("context", slice(0, vc), vc), ("target", slice(vc, None), vt)):
        batch.update({f"{part}_images": jnp.asarray(rng.uniform(-1, 1, (b, v, res, res, 3)), jnp.float32),
                      f"{part}_c2w": jnp.asarray(c2w[:, sl]),
                      f"{part}_intrinsics": jnp.asarray(np.tile([1.0, 1.0, 0.5, 0.5], (b, v, 1)), jnp.float32),
                      f"{part}_points": jnp.zeros((b, v, res, res, 3)), f"{part}_mask": jnp.zeros((b, v, res, res),
                                                                                                 bool)})

    @nnx.jit
    def run(m, batch):
        loss, metrics = task.loss(m, batch, jax.random.key(1))
        cb = task.cond_batch(batch)
        # the reference: the 3DRAE module itself on all 16 views / on the conditioning views only
        return (loss, metrics, task.tokens(m, batch), m.rae.encode(batch["context_images"], batch["context_c2w"],
                                                                  batch["context_intrinsics"]),
                m.rae.encode(cb["context_images"], cb["context_c2w"], cb["context_intrinsics"]),
                cb["context_images"])

    loss, metrics, tokens, ref16, ref_cond, cond_images = run(model, batch)
    assert np.isfinite(float(loss)) and 0 <= float(metrics["views_kept"]) <= 2  # conditions: at most 2 views
    np.testing.assert_allclose(tokens, np.asarray(ref16) * task.scale, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(tokens) - np.asarray(ref_cond)).max() > 1e-3  # not the tokens of the 2 views
    np.testing.assert_array_equal(cond_images, np.asarray(batch["context_images"])[:, [0, 15]])
    # a batch with fewer context views than tokenizer.num_views is refused, naming the setting
    short = {k: (v[:, :4] if k.startswith("context_") else v) for k, v in batch.items()}
    with pytest.raises(ValueError, match="config.tokenizer.num_views=16"):
        jax.eval_shape(lambda m, bb: task.loss(m, bb, jax.random.key(0)), model, short)
