"""SceneTok vs the official PyTorch release (fixtures a/b: compressor and one denoiser call, intermediates, round-trip
export, released key manifests), RoPE / ray maps / Wan padding vs numpy re-implementations of the release's
description, and the tiny variant: view-order invariance, loss + gradients, Euler rendering, CFG null token."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d import nn
from scene3d.convert import parity
from scene3d.convert import scenetok as cv
from scene3d.core.sharding import DEFAULT_RULES
from scene3d.geometry.cameras import as_intrinsics4
from scene3d.models import scenetok as st

# Compressor: float32 (observed max |ours - official| ~1.5e-5 on values up to ~60). Denoiser: 1e-3 absolute,
# because the release rounds the camera embedding to bfloat16 (one-ulp flips when ours differs by ~1e-7).
RTOL = 1e-5
DENOISER_ATOL = 1e-3
MANIFESTS = {"re10k": "manifest_re10k.json", "dl3dv": "manifest_dl3dv.json", "dl3dv_wan": "manifest_dl3dv_va-wan.json"}


def nhwc(x):
    """(B, V, C, H, W) -> (B, V, H, W, C)."""
    return jnp.asarray(np.moveaxis(np.asarray(x), 2, -1))


def close(ours, ref, atol=None):
    ref = np.asarray(ref)
    atol = RTOL * np.abs(ref).max() if atol is None else atol
    np.testing.assert_allclose(np.asarray(ours).reshape(ref.shape), ref, rtol=RTOL, atol=atol)


def close_bf16(ours, ref, atol=DENOISER_ATOL, max_flips=1e-3):
    """``close`` for a tensor the release rounds to bfloat16: a float32 difference of ~1e-7 (another CPU's FMA and
    vector units) flips a value that sits on a rounding boundary by one bfloat16 step. At most a fraction
    ``max_flips`` of the elements may be off by more than ``atol``, and each of those by one step only."""
    ref = np.asarray(ref, np.float64)
    ours = np.asarray(ours, np.float64).reshape(ref.shape)
    diff = np.abs(ours - ref)
    off = diff > atol + RTOL * np.abs(ref)
    step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref), 1e-30))) - 7)  # bfloat16 spacing at |ref|
    assert off.mean() <= max_flips, f"{off.sum()} of {off.size} elements differ by more than {atol}"
    assert np.all(diff[off] <= 1.01 * step[off]), f"differences {diff[off]} exceed one bfloat16 step {step[off]}"


def fixture_dir(shared_dir, name):
    d = shared_dir / "fixtures" / "scenetok" / name
    if not d.is_dir():
        pytest.skip(f"fixture {d} not found")
    return d


@pytest.fixture(scope="module", params=["a", "b"])
def official(request, shared_dir):
    d = fixture_dir(shared_dir, request.param)
    fx = parity.load_fixture(d)
    # the parity command's runner (jitted): compressor on the context latents, one denoiser call on the stored
    # noisy targets conditioned on the stored compressor.scene_tokens, and per-block intermediates
    run = parity.run_fixture(fx, "scenetok")
    ex = run.extras
    return dict(tokens=ex["tokens"], caux=ex["compressor_aux"], v=ex["v"], daux=ex["decoder_aux"],
                pemb32=run.values["intermediate.denoiser.pose_embed"], name=request.param, dir=d, weights=fx.weights,
                inputs=fx.inputs, outputs=fx.outputs, model=run.model, report=run.report, run=run)


def test_variants_match_official_configs(shared_dir):
    for name in ("a", "b"):
        cfg = cv.config_from_official(fixture_dir(shared_dir, name) / "config.json")
        assert cfg == {k: dict(v) for k, v in st.VARIANTS[f"fixture_{name}"].items()}
    root = shared_dir / "fixtures" / "scenetok"
    for variant, fname in MANIFESTS.items():
        assert cv.config_from_official(root / fname) == st.VARIANTS[variant]
    with pytest.raises(ValueError, match="model.compressor"):
        cv.config_from_official({"peer": "x"})


def test_compressor_matches_official(official):
    out, aux = official["outputs"], official["caux"]
    for k in ("mean", "logvar", "std"):
        close(aux[k], out[f"compressor.{k}"])
    close(official["tokens"], out["compressor.scene_tokens"])
    b, v, dim, gh, gw = out["intermediate.compressor.pose_embed"].shape
    close(aux["pose_embed"], np.moveaxis(out["intermediate.compressor.pose_embed"], 2, -1).reshape(b, -1, dim))
    close(aux["image_tokens"], out["intermediate.compressor.y_embed"].reshape(b, -1, dim))
    close(aux["moments"], out["intermediate.compressor.out_proj"])
    assert aux["kl"].shape == (b,) and np.all(np.isfinite(aux["kl"]))


def test_denoiser_matches_official(official):
    out, aux, i = official["outputs"], official["daux"], official["inputs"]
    close(aux["state"], out["denoiser.cond_state"])
    b, m, dim, gh, gw = out["intermediate.denoiser.pose_embed"].shape
    per_token = lambda x: np.moveaxis(x, 2, -1).reshape(b, -1, dim)  # noqa: E731
    close(official["pemb32"], out["intermediate.denoiser.pose_embed"])  # before the bf16 rounding
    close_bf16(aux["pose_embed"], per_token(out["intermediate.denoiser.pose_embed_bf16"]))
    close_bf16(aux["cond"], out["intermediate.denoiser.model.t_embedder"].reshape(b, -1, dim))
    v = np.asarray(official["v"])
    close(v, np.moveaxis(out["denoiser.pred_flow"], 2, -1), atol=DENOISER_ATOL)
    t = i["denoiser.t_rf"][:, :, None, None, None]
    close(nhwc(i["denoiser.view"]) - t * v, np.moveaxis(out["denoiser.pred_x0"], 2, -1), atol=DENOISER_ATOL)
    np.testing.assert_allclose(np.asarray(official["model"].decoder.timestep_input(i["denoiser.t_rf"])),
                               i["denoiser.timestep"], rtol=0, atol=1e-4)


def test_every_output_within_the_parity_tolerance(official):
    """All stored outputs, the per-block intermediates included (the parity command's check)."""
    rows = parity.compare(official["run"], official["dir"])
    assert len(rows) == len(official["outputs"]) and all(r.ok for r in rows), [r for r in rows if not r.ok]


def test_export_round_trip_is_exact(official):
    weights, report, m = official["weights"], official["report"], official["model"]
    assert report.ignored == {} and set(report.consumed) == set(weights)
    assert list(report.initialised) == [cv.NULL_KEY]
    np.testing.assert_array_equal(np.asarray(m.decoder.null_token[...]), 0.0)
    exported = cv.export_official(m, extra=report.passthrough)
    assert set(exported) == set(weights)
    for k, v in weights.items():
        assert exported[k].dtype == v.dtype and exported[k].shape == v.shape, k
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    # without the passthrough the RoPE tables are recomputed (EVA-02 formula): equal to float32 rounding
    fresh = cv.export_official(m, null_tokens=True)
    for k in cv.ROPE_KEYS:
        np.testing.assert_allclose(fresh[k], weights[k], rtol=0, atol=1e-6)
    assert fresh[cv.NULL_KEY].shape == (1, 1, m.decoder.config["width"])


def test_import_extras_null_tokens_and_errors(official):
    weights, m = official["weights"], official["model"]
    width = m.decoder.config["width"]
    null = np.random.default_rng(0).standard_normal((1, 1, width)).astype(np.float32)
    sd = dict(weights, **{cv.NULL_KEY: null, "denoiser.some_extra": np.zeros(3, np.float32)})
    state, report = cv.official_to_state(m, sd)
    assert report.ignored == {"denoiser.some_extra": "not used by this SceneTok configuration"}
    assert report.initialised == {} and cv.NULL_KEY in report.consumed
    np.testing.assert_array_equal(nnx.to_pure_dict(state)["decoder"]["null_token"], null[0, 0])
    with pytest.raises(ValueError, match="does not use: \\['denoiser.some_extra'\\]"):
        cv.official_to_state(m, sd, strict=True)
    key = "denoiser.model.blocks.1.mlp.w12.weight"
    shape = weights[key].shape
    with pytest.raises(ValueError, match="missing 1 .*" + re.escape(f"{key} (expected shape {shape})")):
        cv.official_to_state(m, {k: v for k, v in weights.items() if k != key})
    with pytest.raises(ValueError, match=re.escape(f"{key}: expected {shape}, got (4, 4)")):
        cv.official_to_state(m, dict(weights, **{key: np.zeros((4, 4), np.float32)}))
    with pytest.raises(ValueError, match="freqs_cos differs"):
        cv.official_to_state(m, dict(weights, **{cv.ROPE_KEYS[0]: weights[cv.ROPE_KEYS[0]] + 1e-2}))


@pytest.mark.parametrize("variant", sorted(MANIFESTS))
def test_release_variants_map_one_to_one_onto_the_manifests(shared_dir, variant):
    manifest = json.loads((fixture_dir(shared_dir, ".") / MANIFESTS[variant]).read_text())
    model = nnx.eval_shape(lambda: st.SceneTok(variant=variant, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))  # nothing allocated
    ref = {k: (tuple(s), d) for k, s, d in manifest["state_dict"]}
    ours = cv.export_official(model)  # abstract in, ShapeDtypeStructs out
    assert {k: (tuple(v.shape), str(v.dtype)) for k, v in ours.items()} == ref
    n = {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(getattr(model, name), nnx.Param)))
         for name in ("compressor", "decoder")}
    width = model.decoder.config["width"]
    assert n == {"compressor": manifest["compressor_parameters"],
                 "decoder": manifest["denoiser_parameters"] + width}  # + our null token


def test_every_param_has_logical_names():
    model = nnx.eval_shape(lambda: st.SceneTok(variant="re10k", rngs=nnx.Rngs(0)))
    vocab = dict(DEFAULT_RULES)
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.get_value().ndim, path
        assert all(n is None or n in vocab for n in names), (path, names)


# ------------------------------------------------------------------------------------ numpy references


def rotate_half(x):
    """EVA-02 / the release: adjacent pairs (x0, x1) -> (-x1, x0)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return np.stack([-x2, x1], -1).reshape(x.shape)


def test_2d_rope_is_the_release_table(shared_dir):
    """Our axial interleaved RoPE == x * cos + rotate_half(x) * sin with the release's stored tables."""
    w = cv.load_official(fixture_dir(shared_dir, "b") / "weights.safetensors")
    cos, sin = w["compressor.feat_rope.freqs_cos"], w["compressor.feat_rope.freqs_sin"]  # (16, 32): 4x4, hd 32
    x = np.random.default_rng(0).standard_normal((2, 2 * 16, 3, 32)).astype(np.float32)  # 2 views
    ours = jax.jit(lambda x: nn.apply_rope_nd(x, st.rope_2d_positions(2, 4, 4), 10000.0, (16, 16),
                                              interleaved=True))(jnp.asarray(x))
    c, s = np.tile(cos, (2, 1))[None, :, None], np.tile(sin, (2, 1))[None, :, None]
    np.testing.assert_allclose(np.asarray(ours), x * c + rotate_half(x) * s, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim,split", [(16, (4, 6, 6)), (32, (12, 10, 10)), (64, (20, 22, 22))])
def test_3d_rope_split_and_rotation(head_dim, split):
    assert st.rope_split_3d(head_dim) == split and st.rope_split_3d(24) == (8, 8, 8)
    views, gh, gw, groups = 4, 2, 3, 2
    pos = np.asarray(st.rope_3d_positions(views, gh, gw, groups))
    assert pos.shape == (views * gh * gw, 3) and pos[gh * gw * views // groups].tolist() == [0, 0, 0]
    x = np.random.default_rng(1).standard_normal((1, len(pos), 2, head_dim)).astype(np.float32)
    ours = jax.jit(lambda x: nn.apply_rope_nd(x, pos, 10000.0, split, interleaved=True))(jnp.asarray(x))
    # reference: channel blocks [t | h | w], each with freqs 10000^(-2k/s) repeated twice, rotate_half
    angles = np.concatenate([np.repeat(pos[:, a, None] * 10000.0 ** (-np.arange(0, s, 2) / s), 2, -1)
                             for a, s in enumerate(split)], -1)[None, :, None]
    np.testing.assert_allclose(np.asarray(ours), x * np.cos(angles) + rotate_half(x) * np.sin(angles),
                               rtol=1e-5, atol=1e-5)


def random_cameras(rng, shape):
    """Random rigid c2w (shape + (4, 4)) and normalised intrinsics (shape + (4,))."""
    q, _ = np.linalg.qr(rng.standard_normal(shape + (3, 3)))
    c2w = np.zeros(shape + (4, 4), np.float32)
    c2w[..., :3, :3], c2w[..., :3, 3], c2w[..., 3, 3] = q, rng.standard_normal(shape + (3,)), 1.0
    intr = np.concatenate([rng.uniform(0.8, 1.2, shape + (2,)), rng.uniform(0.4, 0.6, shape + (2,))], -1)
    return c2w, intr.astype(np.float32)


def test_official_ray_map_vs_numpy_inverse_k():
    rng = np.random.default_rng(2)
    c2w, intr = random_cameras(rng, (2,))
    h, w = 4, 6
    ours = np.asarray(st.official_ray_map(jnp.asarray(c2w), jnp.asarray(intr), h, w))
    K = np.zeros((2, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3], 1
    jj, ii = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    pix = np.stack([jj, ii, np.ones_like(jj)], -1)
    d = np.einsum("bij,hwj->bhwi", np.linalg.inv(K), pix)
    d = d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-6)
    d = np.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d)
    ref = np.concatenate([d, np.broadcast_to(c2w[:, None, None, :3, 3], d.shape)], -1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    # a normalised 3x3 K gives the same map as the 4-vector
    np.testing.assert_array_equal(np.asarray(as_intrinsics4(jnp.asarray(K, jnp.float32), (2,), "t")), intr)


def test_wan_padding_and_ray_embed_feature_orders():
    x = np.arange(34, dtype=np.float32)[None, :, None]
    padded = np.asarray(st.wan_pad_frames(jnp.asarray(x)))[0, :, 0]
    ref = [0, 0, 0, 0] + list(range(1, 17)) + [17, 0, 0, 0] + list(range(18, 34))
    assert padded.tolist() == ref
    with pytest.raises(ValueError, match="multiple of 17"):
        st.wan_pad_frames(jnp.zeros((1, 16)))
    rays = np.random.default_rng(3).standard_normal((1, 2, 4, 4, 4, 6)).astype(np.float32)  # B V T H W C, p=2
    for incorrect in (False, True):
        emb = nnx.eval_shape(lambda: st.RayEmbed(4, 2, 5, force_incorrect=incorrect, rngs=nnx.Rngs(0)))
        kernel = np.random.default_rng(4).standard_normal((4 * 2 * 2 * 6, 5)).astype(np.float32)
        emb.proj.kernel = nnx.Param(jnp.asarray(kernel))
        ours = np.asarray(emb(jnp.asarray(rays)))
        # einops "b v (t c) (hh ph) (ww pw) -> b v (hh ww) (t ph pw c)" (correct) or "(ph pw t c)" (incorrect)
        r = rays.reshape(1, 2, 4, 2, 2, 2, 2, 6)  # b v t hh ph ww pw c
        order = (0, 1, 3, 5, 4, 6, 2, 7) if incorrect else (0, 1, 3, 5, 2, 4, 6, 7)
        feats = r.transpose(order).reshape(1, 2, 4, -1)
        np.testing.assert_allclose(ours, feats @ kernel, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ tiny variant


def randomized(abstract_module, seed=0):
    """Fill an abstract module's parameters with random values (no initialiser compiled: fast on CPU)."""
    graphdef, params = nnx.split(abstract_module)
    r = np.random.default_rng(seed)

    def fill(path, x):
        n = r.standard_normal(x.shape).astype(np.float32)
        if path[-1] == "kernel":
            return jnp.asarray(n / np.sqrt(x.shape[-2]))
        return jnp.asarray(1.0 + 0.1 * n if path[-1] == "scale" else 0.3 * n)

    pure = nnx.to_pure_dict(params)
    pure = jax.tree_util.tree_map_with_path(lambda p, x: fill(tuple(getattr(k, "key", k) for k in p), x), pure)
    nnx.replace_by_pure_dict(params, pure)
    return nnx.merge(graphdef, params)


@pytest.fixture(scope="module")
def tiny():
    model = randomized(nnx.eval_shape(lambda: st.SceneTok(variant="tiny", rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(5)
    b, v, m = 2, 3, 4
    cc2w, cintr = random_cameras(rng, (b, v))
    tc2w, tintr = random_cameras(rng, (b, m))
    cc2w, tc2w = st.relative_to_reference(jnp.asarray(cc2w), jnp.asarray(tc2w))
    batch = dict(context_latents=rng.standard_normal((b, v, 8, 8, 4)).astype(np.float32), context_c2w=cc2w,
                 context_intrinsics=cintr, target_latents=rng.standard_normal((b, m, 4, 4, 4)).astype(np.float32),
                 target_c2w=tc2w, target_intrinsics=tintr)
    return model, jax.tree.map(jnp.asarray, batch)


def test_tiny_compressor_is_invariant_to_context_view_order(tiny):
    model, batch = tiny
    np.testing.assert_allclose(np.asarray(batch["context_c2w"][:, 0]), np.broadcast_to(np.eye(4), (2, 4, 4)),
                               atol=1e-5)  # poses are relative to context view 0

    @jax.jit
    def means(m, lat, c2w, intr):
        return m.compressor(lat, c2w, intr, sample=False)[0]

    args = (batch["context_latents"], batch["context_c2w"], batch["context_intrinsics"])
    base = np.asarray(means(model, *args))
    perm = np.array([2, 0, 1])
    permuted = np.asarray(means(model, *(a[:, perm] for a in args)))
    np.testing.assert_allclose(permuted, base, rtol=1e-4, atol=1e-5)
    # ... but it does see the cameras: moving one context camera changes the tokens
    moved = batch["context_c2w"].at[:, 1, :3, 3].add(0.5)
    assert np.abs(np.asarray(means(model, args[0], moved, args[2])) - base).max() > 1e-3


def test_tiny_loss_backward_null_tokens_and_render(tiny):
    model, batch = tiny
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss_grad(s, batch, rng):
        def f(s):
            return nnx.merge(graphdef, s).loss(batch, rng, time_sampler="logit_normal,shift=2.0", num_chunks=2,
                                               null_prob=0.5)
        return jax.value_and_grad(f, has_aux=True)(s)

    (loss, aux), grads = loss_grad(state, batch, jax.random.key(0))
    assert np.isfinite(float(loss)) and float(loss) > 0
    np.testing.assert_allclose(float(loss), float(aux["flow_loss"]) + 1e-4 * float(aux["kl"]), rtol=1e-5)
    t = np.asarray(aux["t"])
    assert t.shape == (2, 4) and np.all(t[:, :2] == t[:, :1]) and np.all(t[:, 2:] == t[:, 2:3])  # one t per chunk
    g = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(x)) for x in g) and sum(float(jnp.abs(x).sum()) for x in g) > 0

    @jax.jit
    def calls(m, batch, tokens, x, t):
        cams = batch["target_c2w"], batch["target_intrinsics"]
        v_mix, _ = m.decoder(x, t, *cams, tokens, drop=jnp.array([True, False]))
        v_null, _ = m.decoder(x, t, *cams, None)
        one = m.render(tokens, *cams, None, num_steps=1, noise=x)  # one Euler step from t = 1 to 0: x - v_cond
        return v_mix, v_null, one

    tokens = jnp.asarray(aux["tokens"])
    x = jax.random.normal(jax.random.key(2), batch["target_latents"].shape)
    v_mix, v_null, one = (np.asarray(a) for a in calls(model, batch, tokens, x, jnp.full((2,), 1.0)))
    v_cond = np.asarray(x) - one
    assert one.shape == (2, 4, 4, 4, 4) and np.all(np.isfinite(one))
    np.testing.assert_allclose(v_mix[0], v_null[0], rtol=1e-5, atol=1e-5)  # dropped -> the null token
    np.testing.assert_allclose(v_mix[1], v_cond[1], rtol=1e-5, atol=1e-5)
    assert np.abs(v_cond - v_null).max() > 1e-3  # the tokens matter
    # guided multi-step sampling traces to the right shape (the CFG arithmetic is tested in tests/diffusion)
    out = jax.eval_shape(lambda m: m.render(tokens, batch["target_c2w"], batch["target_intrinsics"],
                                            jax.random.key(1), num_steps=3, cfg_scale=2.0, shift=2.0,
                                            cfg_interval=(0.2, 1.0)), model)
    assert out.shape == (2, 4, 4, 4, 4)


def test_input_validation_names_shapes(tiny):
    model, batch = tiny
    comp = model.compressor
    with pytest.raises(ValueError, match=re.escape("channels-last (B, V, H, W, 4)")):
        comp(batch["context_latents"][..., :3], batch["context_c2w"], batch["context_intrinsics"], sample=False)
    with pytest.raises(ValueError, match=re.escape("c2w must be (2, 3, 4, 4)")):
        comp(batch["context_latents"], batch["context_c2w"][:, :2], batch["context_intrinsics"], sample=False)
    with pytest.raises(ValueError, match="intrinsics must be"):
        comp(batch["context_latents"], batch["context_c2w"], batch["context_intrinsics"][..., :3], sample=False)
    with pytest.raises(ValueError, match="needs rng"):
        comp(batch["context_latents"], batch["context_c2w"], batch["context_intrinsics"])
    with pytest.raises(ValueError, match="unknown config keys"):
        st.SceneTokCompressor(variant="tiny", rngs=nnx.Rngs(0), widht=3)
    with pytest.raises(ValueError, match="ray_kind"):
        st.SceneTokDecoder(variant="tiny", rngs=nnx.Rngs(0), ray_kind="nope")
    wan = nnx.eval_shape(lambda: st.SceneTokDecoder(variant="fixture_b", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=re.escape("c2w must be (1, 17, 4, 4) for 5 latent views")):
        wan.camera_embed(jnp.zeros((1, 20, 4, 4)), jnp.zeros((1, 20, 4)), 5, (4, 4))
    with pytest.raises(ValueError, match="multiple of 5"):
        wan.num_cameras(4)


def test_x_prediction_velocity_from_the_same_network(tiny):
    """prediction='x' reads the network output as x0: v = (x_t - out) / max(t, t_min), same parameters."""
    model, batch = tiny
    dec_v = model.decoder
    graphdef, state = nnx.split(dec_v)
    dec_x = randomized(nnx.eval_shape(lambda: st.SceneTokDecoder(variant="tiny", prediction="x", x_pred_t_min=0.1,
                                                                    rngs=nnx.Rngs(0))))
    nnx.update(dec_x, state)
    tokens = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 4)), jnp.float32)
    x_t = batch["target_latents"]
    t = jnp.asarray([[0.02, 0.3, 0.7, 1.0], [0.5, 0.05, 0.9, 0.2]], jnp.float32)
    args = (batch["target_c2w"], batch["target_intrinsics"], tokens)
    out, _ = dec_v(x_t, t, *args)  # the raw network output
    v, _ = dec_x(x_t, t, *args)
    expect = (np.asarray(x_t) - np.asarray(out)) / np.maximum(np.asarray(t), 0.1)[:, :, None, None, None]
    np.testing.assert_allclose(np.asarray(v), expect, rtol=1e-5, atol=1e-5)
    # at t = 1 the one-step estimate x_t - v is the predicted x0 itself
    np.testing.assert_allclose(np.asarray(x_t - v)[0, 3], np.asarray(out)[0, 3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        st.SceneTokDecoder(variant="tiny", prediction="eps", rngs=nnx.Rngs(0))
