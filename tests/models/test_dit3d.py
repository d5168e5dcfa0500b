"""3DDiT: masked conditions contribute nothing, no condition == every condition dropped (the CFG null), both
conditioning modes, per-example condition configurations vs their definition, seeds give different scenes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.models import dit3d
from scene3d.tasks.dit3d import condition_masks

K, C, F = 6, 8, 16


def _cond(rng, b=2, v=3, t=2):
    c2w = np.tile(np.eye(4, dtype=np.float32), (b, t, 1, 1))
    c2w[..., :3, 3] = rng.normal(size=(b, t, 3))
    return {"view_features": jnp.asarray(rng.normal(size=(b, v, 2, 2, F)), jnp.float32),
            "view_rays": jnp.asarray(rng.normal(size=(b, v, 2, 2, 6)), jnp.float32),
            "view_mask": jnp.asarray([[True, True, False], [True, False, False]]),
            "traj_c2w": jnp.asarray(c2w), "traj_intrinsics": jnp.asarray(np.tile([1.0, 1.0, 0.5, 0.5], (b, t, 1)),
                                                                          jnp.float32),
            "traj_mask": jnp.asarray([[True, True], [False, False]])}


@pytest.fixture(scope="module", params=["cross", "in_context"])
def model_and_fn(request):
    m = dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, cond_mode=request.param, dim=32, depth=2,
                    rngs=nnx.Rngs(0))
    # adaLN-Zero starts as the identity: give the blocks non-zero weights so conditions matter
    graphdef, state = nnx.split(m)
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), state)
    m = nnx.merge(graphdef, state)
    return m, nnx.jit(lambda m, x, t, c: m(x, t, c)[0])


def test_masked_conditions_are_ignored_and_null_equals_dropped(model_and_fn):
    m, fn = model_and_fn
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, K, C)), jnp.float32)
    t = jnp.asarray([0.3, 0.8])
    cond = _cond(rng)
    v = fn(m, x, t, cond)
    assert v.shape == (2, K, C) and np.isfinite(np.asarray(v)).all()
    # garbage (even NaN) in masked views / cameras changes nothing
    vf = np.asarray(cond["view_features"]).copy()
    vf[0, 2], vf[1, 1:] = np.nan, 1e3
    c2 = np.asarray(cond["traj_c2w"]).copy()
    c2[1] = np.nan
    v2 = fn(m, x, t, dict(cond, view_features=jnp.asarray(vf), traj_c2w=jnp.asarray(c2)))
    np.testing.assert_allclose(v2, v, atol=1e-5)
    # the conditions matter where present
    v3 = fn(m, x, t, dict(cond, view_mask=jnp.zeros((2, 3), bool)))
    assert np.abs(np.asarray(v3 - v)).max() > 1e-4
    # unconditional (None) == all conditions dropped
    dropped = dict(cond, view_mask=jnp.zeros((2, 3), bool), traj_mask=jnp.zeros((2, 2), bool))
    np.testing.assert_allclose(fn(m, x, t, None), fn(m, x, t, dropped), atol=1e-5)


def test_condition_masks_follow_their_definition():
    n = 4000
    probs = (0.1, 0.2, 0.3, 0.15, 0.25)
    modes, vm, tm = jax.device_get(condition_masks(jax.random.key(0), n, 4, 3, probs))
    modes, vm, tm = np.asarray(modes), np.asarray(vm), np.asarray(tm)
    nv = vm.sum(1)
    assert (vm == (np.arange(4)[None] < nv[:, None])).all()  # always a prefix: view 0 (the frame) first
    names = dit3d.CONDITIONS
    for i, name in enumerate(names):
        sel = modes == i
        assert abs(sel.mean() - probs[i]) < 0.03, name
        views = {"uncond": (0, 0), "one_view": (1, 1), "views": (2, 4), "trajectory": (0, 0),
                 "views_trajectory": (2, 4)}[name]
        assert nv[sel].min() >= views[0] and nv[sel].max() <= views[1], name
        assert (tm[sel].all(1) if "trajectory" in name else ~tm[sel].any(1)).all(), name
    assert set(np.unique(nv[modes == names.index("views")])) == {2, 3, 4}
    # per-type CFG dropout
    _, vm2, tm2 = jax.device_get(condition_masks(jax.random.key(1), n, 4, 3, (0, 0, 0, 0, 1.0), 0.3, 0.6))
    assert abs((np.asarray(vm2).sum(1) == 0).mean() - 0.3) < 0.03
    assert abs((~np.asarray(tm2)[:, 0]).mean() - 0.6) < 0.03


def test_sampling_seeds_give_different_scenes():
    from scene3d.diffusion import samplers
    m = dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, dim=32, depth=1, rngs=nnx.Rngs(3))
    cond = _cond(np.random.default_rng(4))
    graphdef, state = nnx.split(m)

    @jax.jit
    def sample(key):
        fn = lambda x, t: nnx.merge(graphdef, state)(x, t, cond)[0]
        return samplers.sample(fn, jax.random.normal(key, (2, K, C)), num_steps=4)

    a, b, a2 = sample(jax.random.key(0)), sample(jax.random.key(1)), sample(jax.random.key(0))
    np.testing.assert_array_equal(a, a2)
    assert np.abs(np.asarray(a - b)).mean() > 0.1


def test_bad_inputs_raise():
    m = dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, dim=32, depth=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x must be"):
        m(jnp.zeros((1, K + 1, C)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match="cond_mode"):
        dit3d.DiT3D("tiny", num_tokens=K, latent_dim=C, view_dim=F, cond_mode="concat", rngs=nnx.Rngs(0))
