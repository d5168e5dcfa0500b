"""SceneGen vs the official SceneTok release (fixtures scenegen_a/b: outputs, export round trip, released key
manifest), sin-cos table vs the stored diffusers buffer, sampling (seeds, time shift, CFG) and the condition mask."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.convert import parity
from scene3d.convert import scenegen as cv
from scene3d.core.sharding import make_mesh, state_shardings
from scene3d.diffusion.timesteps import shift_time
from scene3d.models.scenegen import Buffer, SceneGen, num_params, random_cond_mask, sincos_table

P = "scene_generator."
# float32 parts: observed max |ours - official| ~2e-6; parts after the release's bf16 camera cast: README's 1e-3.
F32_TOL = 1e-5
BF16_TOL = 1e-3


def fixture_dir(shared_dir, name):
    d = shared_dir / "fixtures" / "scenetok" / name
    if not d.is_dir():
        pytest.skip(f"fixture {d} not found")
    return d


@pytest.fixture(scope="module", params=["scenegen_a", "scenegen_b"])
def official(request, shared_dir):
    d = fixture_dir(shared_dir, request.param)
    fx = parity.load_fixture(d)
    i = {k[len(P):]: v for k, v in fx.inputs.items()}
    np.testing.assert_allclose(i["timestep"], np.maximum(i["t_rf"] * 1000 - 1, 0), rtol=1e-6)  # per-sample t
    assert np.all(i["t_rf"] == i["t_rf"][:, :1])
    run = parity.run_fixture(fx, "scenegen")  # the parity command's runner: one velocity call, jitted
    return dict(dir=d, weights=fx.weights, inputs=i, outputs=fx.outputs, model=run.model, report=run.report,
                v=run.extras["v"], aux=run.extras["aux"], run=run)


def _grid(x):  # (B, V, D, h, w) -> (B, V, h*w, D)
    b, v, d, h, w = x.shape
    return x.transpose(0, 1, 3, 4, 2).reshape(b, v, h * w, d)


def test_fixture_parity(official):
    o, aux, m = official["outputs"], official["aux"], official["model"]
    ok = lambda a, b, tol: np.testing.assert_allclose(np.asarray(a), b, rtol=tol, atol=tol)
    ok(aux["pose_embed"], _grid(o["intermediate.scene_generator.pose_embed"]), F32_TOL)
    ok(aux["anchor_pose_embed"], _grid(o["intermediate.scene_generator.anchor_pose_embed"]), F32_TOL)
    ok(aux["x_embed"], o["intermediate.scene_generator.model.x_embedder"], F32_TOL)
    ce = o["intermediate.scene_generator.model.c_embedder"]
    ok(np.asarray(aux["c_embed"]).reshape(ce.shape), ce, F32_TOL)
    te = o["intermediate.scene_generator.model.t_embedder"]
    ok(np.broadcast_to(np.asarray(aux["t_embed"])[:, None], te.shape), te, F32_TOL)
    ok(aux["hidden"], o[f"intermediate.scene_generator.model.blocks.{m.config['depth'] - 1}"], BF16_TOL)
    ok(official["v"], o[P + "pred_flow"], BF16_TOL)
    # The flow target convention is ours: v = eps - x0.
    i = official["inputs"]
    np.testing.assert_allclose(o[P + "flow_target"], i["noise"] - i["x0"], rtol=1e-6, atol=1e-6)
    assert official["report"].ignored == {}
    # every stored output (every block too) within the parity command's tolerance
    rows = parity.compare(official["run"], official["dir"])
    assert len(rows) == len(o) and all(r.ok for r in rows), [r for r in rows if not r.ok]


def test_sincos_table_vs_stored_buffer(official):
    w, m = official["weights"], official["model"]
    for name in ("pose_embed", "anchor_pose_embed"):
        stored = w[f"{P}{name}.model.model.pos_embed"]
        mm = int(round(np.sqrt(stored.shape[1])))
        ours = np.asarray(sincos_table(stored.shape[2], mm, m.pose_embed.grid[0]))
        np.testing.assert_allclose(ours.reshape(stored.shape), stored, atol=2e-6)


def test_export_round_trip(official):
    out = cv.export_official(official["model"])
    assert set(out) == set(official["weights"])
    for k, v in official["weights"].items():
        assert out[k].dtype == v.dtype
        np.testing.assert_array_equal(out[k], v, err_msg=k)


def test_import_errors(official):
    w, cfg = official["weights"], official["dir"] / "config.json"
    key = P + "model.x_embedder.weight"
    with pytest.raises(ValueError, match="missing 1 keys.*x_embedder.weight"):
        cv.model_from_official(cfg, {k: v for k, v in w.items() if k != key})
    with pytest.raises(ValueError, match="shape mismatch.*x_embedder.weight"):
        cv.model_from_official(cfg, dict(w, **{key: np.zeros((3, 3), np.float32)}))
    extra = dict(w, **{P + "model.unused_head.weight": np.zeros((2,), np.float32)})
    with pytest.raises(ValueError, match="strict=False"):
        cv.model_from_official(cfg, extra)
    _, report = cv.model_from_official(cfg, extra, strict=False)
    assert report.ignored == {P + "model.unused_head.weight": "not used by this SceneGen configuration"}


def test_release_manifest(shared_dir):
    path = shared_dir / "fixtures" / "scenetok" / "manifest_scenegen_re10k.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    manifest = json.loads(path.read_text())
    abstract = nnx.eval_shape(lambda: SceneGen("re10k", rngs=nnx.Rngs(0)))
    expected = {k[len(P):]: tuple(s) for k, s, _ in manifest["state_dict"]}
    assert cv.official_shapes(abstract) == expected
    assert num_params(abstract) == manifest["total_parameters"]
    assert num_params(abstract) + sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, Buffer))) \
        == manifest["state_dict_numel"]
    assert cv.release_variant_matches(manifest)
    exported = cv.export_official(abstract)  # abstract: ShapeDtypeStructs only
    assert {k: tuple(v.shape) for k, v in exported.items()} == {P + k: v for k, v in expected.items()}
    # Every variable carries logical names the rules table knows (creates shardings on a fake 8-device mesh).
    shardings = state_shardings(nnx.state(abstract), make_mesh((1, 8, 1)))
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(nnx.state(abstract)))


# ---------------------------------------------------------------------------------------------------- sampling


def randomized(abstract, seed=0):
    graphdef, state = nnx.split(abstract)
    r = np.random.default_rng(seed)

    def fill(path, x):
        n = r.standard_normal(x.shape).astype(np.float32)
        if path[-1].key == "kernel":
            return jnp.asarray(n / np.sqrt(x.shape[-2]))
        return jnp.asarray(1.0 + 0.1 * n if path[-1].key == "scale" else 0.1 * n)

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def tiny():
    model = randomized(nnx.eval_shape(lambda: SceneGen("tiny", max_cond_views=2, rngs=nnx.Rngs(0))))
    r = np.random.default_rng(0)
    b, nv, na = 2, 2, 3
    eye = np.broadcast_to(np.eye(4, dtype=np.float32), (b, na, 4, 4)).copy()
    eye[..., :3, 3] = r.normal(0, 0.5, (b, na, 3))
    intr = np.broadcast_to(np.array([0.9, 0.9, 0.5, 0.5], np.float32), (b, na, 4))
    grid = model.camera_grid
    cond = dict(cond_latents=jnp.asarray(r.standard_normal((b, nv, grid[0], grid[1], 8)).astype(np.float32)),
                anchor_c2w=jnp.asarray(eye), anchor_intrinsics=jnp.asarray(intr),
                cond_c2w=jnp.asarray(eye[:, :nv]), cond_intrinsics=jnp.asarray(intr[:, :nv]))
    return model, cond


@nnx.jit(static_argnames=("num_steps", "guided"))
def sample(model, rng, cond, noise=None, num_steps=2, guided=False, cfg_scale=None):
    return model.sample(rng, **cond, noise=noise, num_steps=num_steps, cfg_scale=cfg_scale if guided else None)


def test_sampling_seeds_shift_and_cfg(tiny):
    model, cond = tiny
    a = sample(model, jax.random.key(0), cond)
    b = sample(model, jax.random.key(1), cond)
    assert a.shape == (2, model.num_tokens, model.token_dim) and np.all(np.isfinite(np.asarray(a)))
    assert np.abs(np.asarray(a) - np.asarray(b)).mean() > 0.1

    noise = jax.random.normal(jax.random.key(3), (2, model.num_tokens, model.token_dim))
    call = nnx.jit(lambda m, x, t, mask: m(x, jnp.full((2,), t), **cond, cond_mask=mask)[0])
    on, off = jnp.ones((2, 2), bool), jnp.zeros((2, 2), bool)
    # Two Euler steps on the grid shifted by the model's s = 4 (t: 1 -> shift(0.5) -> 0), conditional.
    assert model.shift == 4.0
    tm = float(shift_time(0.5, 4.0))
    x = noise + (tm - 1.0) * call(model, noise, 1.0, on)
    x = x + (0.0 - tm) * call(model, x, tm, on)
    got = sample(model, None, cond, noise=noise, num_steps=2)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x) / model.token_scale, rtol=1e-4, atol=1e-4)
    # One guided Euler step: scale 1 == conditional; scale 3 == v_u + 3 (v_c - v_u), v_u with every view masked.
    vc, vu = call(model, noise, 1.0, on), call(model, noise, 1.0, off)
    assert np.abs(np.asarray(vc) - np.asarray(vu)).max() > 1e-3
    for scale, v in ((1.0, vc), (3.0, vu + 3.0 * (vc - vu))):
        g = sample(model, None, cond, noise=noise, num_steps=1, guided=True, cfg_scale=jnp.float32(scale))
        np.testing.assert_allclose(np.asarray(g), np.asarray(noise - v) / model.token_scale, rtol=1e-4, atol=1e-4)


def test_null_condition_and_camera_dropout(tiny):
    model, cond = tiny
    x = jax.random.normal(jax.random.key(0), (2, model.num_tokens, model.token_dim))
    t = jnp.array([0.3, 0.8])
    f = nnx.jit(lambda m, c, mask, rng: m(x, t, c, cond["anchor_c2w"], cond["anchor_intrinsics"], cond["cond_c2w"],
                                          cond["cond_intrinsics"], cond_mask=mask, rng=rng))
    masked, _ = f(model, cond["cond_latents"], jnp.zeros((2, 2), bool), None)
    none, _ = f(model, None, None, None)  # max_cond_views = 2 null views + anchors
    np.testing.assert_allclose(np.asarray(none), np.asarray(masked), rtol=1e-5, atol=1e-5)
    # Masking only sample 1's second view leaves sample 0 unchanged.
    full, _ = f(model, cond["cond_latents"], jnp.ones((2, 2), bool), None)
    part, _ = f(model, cond["cond_latents"], jnp.array([[True, True], [True, False]]), None)
    np.testing.assert_allclose(np.asarray(part[0]), np.asarray(full[0]), rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(part[1]) - np.asarray(full[1])).max() > 1e-4
    # Camera dropout (training, rng given) zeroes whole samples' camera embeddings at p = 1.
    old, model.camera_dropout = model.camera_dropout, 1.0
    try:
        _, aux = f(model, cond["cond_latents"], jnp.ones((2, 2), bool), jax.random.key(0))
    finally:
        model.camera_dropout = old
    assert float(jnp.abs(aux["pose_embed"]).max()) == 0.0 and float(jnp.abs(aux["anchor_tokens"]).max()) == 0.0


def test_random_cond_mask():
    m = np.asarray(random_cond_mask(jax.random.key(0), 4000, 3, p_view=0.5, p_uncond=0.1))
    dropped = ~m.any(axis=1)
    assert abs(dropped.mean() - 0.1) < 0.02
    kept = m[~dropped]
    assert kept[:, 0].all() and abs(kept[:, 1:].mean() - 0.5) < 0.03


def test_input_validation(tiny):
    model, cond = tiny
    x = jnp.zeros((2, model.num_tokens, model.token_dim))
    with pytest.raises(ValueError, match="x_t must be"):
        model(x[:, :3], jnp.zeros(2), **cond)
    bad = dict(cond, cond_latents=cond["cond_latents"][:, :, :2])
    with pytest.raises(ValueError, match="camera grid"):
        model(x, jnp.zeros(2), **bad)
    with pytest.raises(ValueError, match="intrinsics"):
        model(x, jnp.zeros(2), **dict(cond, anchor_intrinsics=jnp.zeros((2, 3, 5))))
