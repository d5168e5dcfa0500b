"""configs/can3tok.py variants (issue 15, item 3): every variant (tiny, release, paper, runlocal) builds with its own
recipe (loss, radius, row order / layout, anchors, query init, evaluation posterior), and tiny / release / paper
train two steps (the trainer's state and compiled step) with tiny sizes on synthetic PLY scenes (runlocal is trained
by the smoke runs of tests/tasks/test_autoencode.py and tests/test_evaluate.py); the full-size release and paper
models as abstract shapes only (parameter counts: the release's against the official manifest, the paper's against
a closed-form count checked on the manifest); the paper's per-query voxel init and radius-following anchors against
numpy; the release's sampled evaluation is deterministic, belongs to the scene (not its place in the batch) and
differs from the posterior mean."""
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.core import sharding as sh
from scene3d.core.config import load_config
from scene3d.data import splat_io
from scene3d.geometry import gaussians as gs
from scene3d.models import can3tok
from scene3d.tasks.autoencode import AutoencodeTask

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "can3tok.py")
N = 32  # Gaussians per crop
# Sizes shrunk for CPU; everything else (loss, radius, rows, order, anchors, query init) stays the variant's.
TINY = {"model.width": 32, "model.heads": 2, "model.encoder_depth": 1, "model.decoder_depth": 0,
        "model.num_latents": 8, "model.embed_dim": 4, "model.latent_dim": 32, "model.head_width": 32,
        "model.num_gaussians": N, "data.gaussians.num_gaussians": N, "data.gaussians.knn": 4}


def _scene(seed, n=48) -> gs.Gaussians:
    rng = np.random.default_rng(seed)
    return gs.Gaussians(xyz=rng.normal(size=(n, 3)) * [3.0, 2.0, 1.0], f_dc=rng.normal(size=(n, 3)),
                        opacity=rng.normal(size=n), scale=rng.normal(-2.0, 0.3, (n, 3)), rot=rng.normal(size=(n, 4)))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("c3t_variant_scenes")
    for i in range(4):
        splat_io.write_ply(d / f"scene_{i}.ply", _scene(i))
    return d


def small_config(arg: str, scenes, **extra):
    c = load_config(f"{CONFIG}:{arg}")
    c.data = dict(name="ply", paths=str(scenes), eval_paths=str(scenes), gaussians=c.data.gaussians.to_dict(),
                  num_threads=1, prefetch=1)
    over = dict(TINY, **{"global_batch_size": 4, "eval_batch_size": 2, "eval_batches": 1, "total_steps": 2,
                         "eval_every": 2, "log_every": 1, "ckpt_every": 2, "async_checkpoint": False,
                         "write_images": False, "num_output_scenes": 0}, **extra)
    if can3tok.VARIANTS[c.model.variant]["query_init"] == "release" and c.model.variant != "tiny":
        over["model.query_grid"] = 2  # the release's whole-grid init writes 3 * 4^3 = 192 dims: more than width 32
    c.update_from_flattened_dict(over)
    return c


# variant arg -> what its recipe must hold (checked on the config the run saved)
RECIPES = {
    "variant=tiny": dict(recon="mse", radius=1.0, order="voxel", rows="release18", anchor_grid=0,
                         query_init="release", eval_posterior="mean"),
    "variant=release": dict(recon="l2_batch", radius=10.0, order="none", rows="release18", anchor_grid=0,
                            query_init="release", eval_posterior="sample"),
    "variant=paper": dict(recon="mse", radius=1.0, order="voxel", rows="release18", anchor_grid=40,
                          query_init="per_query", eval_posterior="mean"),
    "runlocal": dict(recon="mse", radius=1.0, order="kdtree", rows="raw", anchor_grid=0, query_init="release",
                     eval_posterior="mean"),
}


def test_every_variant_builds_with_its_recipe(scenes):
    for arg, want in RECIPES.items():
        c = small_config(arg, scenes)
        task = AutoencodeTask(c)
        arch = dict(can3tok.VARIANTS[c.model.variant], **task.overrides)
        got = dict(recon=task.recon_kind, radius=c.data.gaussians.radius, order=c.data.gaussians.order,
                   rows=c.data.gaussians.rows, anchor_grid=arch["anchor_grid"], query_init=arch["query_init"],
                   eval_posterior=task.eval_posterior)
        assert got == want, arg
        if arch["anchor_grid"]:
            assert arch["anchor_extent"] == arch["query_grid_extent"] == c.data.gaussians.radius
        nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))  # builds
        # renders frame the crop the same way at any radius
        assert load_config(f"{CONFIG}:{arg}").render.distance == pytest.approx(2.4 * want["radius"])
    # the documented command line sets a PLY data set on the locked config
    c = load_config(f"{CONFIG}:variant=release")
    c.lock()
    c.update_from_flattened_dict({"data.name": "ply", "data.paths": str(scenes), "data.eval_paths": str(scenes)})
    assert c.data.paths == str(scenes)


# runlocal's two steps: the smoke runs of tests/tasks/test_autoencode.py and tests/test_evaluate.py train it.
@pytest.mark.parametrize("arg", ["variant=tiny", "variant=release", "variant=paper"])
def test_variant_trains_two_steps(arg, scenes):
    """The trainer's own state and compiled step (``train.setup``) on the variant's data pipeline: two steps on one
    device (the variants' sharded layouts: tests/configs/test_can3tok_config.py)."""
    from scene3d import train
    from scene3d.data import pipeline
    c = small_config(arg, scenes)
    s, state = train.setup(c, sh.make_mesh(dict(c.mesh), devices=jax.devices()[:1]))
    task = s.task
    want = RECIPES[arg]
    assert task.recon_kind == want["recon"]
    it = train.data_iterator(c, task, "train")
    batch = pipeline.to_global(next(it), s.mesh)
    step = train.compile_train_step(s, state, batch)
    losses = []
    for _ in range(2):
        with sh.use_mesh(s.mesh, s.rules):
            state, m = step(state, batch)
        losses.append(float(m["loss"]))
        assert float(m["step_skipped"]) == 0.0 and np.isfinite(float(m["recon"]))
        batch = pipeline.to_global(next(it), s.mesh)
    assert int(state["step"]) == 2 and all(np.isfinite(losses))
    # the crops fill the variant's ball: the farthest Gaussian of every crop at radius / 1.1 from the crop's mean
    xyz = np.asarray(jax.device_get(batch["gaussians"]))[..., task.offset:task.offset + 3].astype(np.float64)
    far = np.linalg.norm(xyz - xyz.mean(1, keepdims=True), axis=-1).max(1)
    np.testing.assert_allclose(far, want["radius"] / 1.1, rtol=1e-4)


# ------------------------------------------------------------------------------------------ full size, abstract


def param_count(c: dict) -> int:
    """Closed-form parameter count of a Can3Tok architecture (our reading of the module, written out)."""
    w, e, k, hw = c["width"], c["embed_dim"], c["latent_dim"], c["head_width"]
    fdim = 3 * (2 * c["num_bands"] + 1)
    in_dim = fdim * (2 if c["anchor_grid"] else 1) + c["point_feats"]
    ln = 2 * w
    attn = 4 * w * w + 4 * w + (0 if c["qkv_bias"] else -3 * w)  # q, k, v, out (+ biases: out always)
    mlp = 2 * int(c["mlp_ratio"] * w) * w + int(c["mlp_ratio"] * w) + w
    block = 2 * ln + attn + mlp
    cross = 3 * ln + attn + mlp
    n = (c["num_latents"] + int(c["shape_token"])) * w + in_dim * w + w + cross + c["encoder_depth"] * block
    n += ln if c["use_ln_post"] else 0
    n += w * 2 * e + 2 * e + 2 * (c["num_latents"] * e * k + k) + e * w + w + c["decoder_depth"] * block
    t = k // e
    n += t * w * hw + hw + (c["head_depth"] - 1) * (hw * hw + hw + 2 * hw)
    n += hw * c["num_gaussians"] * c["gs_channels"] + c["num_gaussians"] * c["gs_channels"]
    return n


@pytest.mark.parametrize("variant", ["release", "paper"])
def test_full_size_configs_as_abstract_shapes(variant, shared_dir):
    manifest = json.loads((shared_dir / "fixtures" / "can3tok" / "manifest_shapevae-256.json").read_text())
    c = load_config(f"{CONFIG}:variant={variant}")
    task = AutoencodeTask(c)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in params)  # nothing allocated
    total = sum(math.prod(x.shape) for x in params)
    release_official = manifest["total_parameters"] - manifest["parameters_by_submodule"]["shape_model.geo_decoder"]
    assert param_count(dict(can3tok.VARIANTS["release"])) == release_official  # the formula, on the manifest
    if variant == "release":
        assert total == release_official
    else:
        assert total == param_count(model.config) and total > 1.3e9
        # voxel anchors double the Fourier input; the queries span the data ball
        assert model.input_proj.kernel.shape[0] == 2 * 51 + 11
        assert model.config["anchor_extent"] == model.config["query_grid_extent"] == c.data.gaussians.radius


# ------------------------------------------------------------------------------------------ paper: init, anchors


def test_per_query_init_puts_query_j_at_voxel_j():
    grid, extent, scale, width, latents = (3, 2, 4), 2.5, 0.5, 16, 20
    q = np.asarray(can3tok.per_query_voxel_queries(latents + 1, width, grid, extent, scale, jax.random.key(0),
                                                   skip=1))
    # numpy reference: the centre of raster voxel j (x slowest) of 3 x 2 x 4 cells over [-2.5, 2.5]^3
    size = 2 * extent / np.array(grid)
    want = []
    for i in range(grid[0]):
        for j in range(grid[1]):
            for k in range(grid[2]):
                want.append((np.array([i, j, k]) + 0.5) * size - extent)
    np.testing.assert_allclose(q[1:, :3], np.array(want)[:latents] * scale, rtol=1e-6, atol=1e-7)
    assert len({tuple(r) for r in np.round(q[1:, :3], 6)}) == latents  # one distinct position per query
    assert np.abs(q[0, :3]).max() < 0.1 and 0.01 < q[:, 3:].std() < 0.04  # shape token and other dims: N(0, 0.02^2)
    with pytest.raises(ValueError, match="24 cells for 30 queries"):
        can3tok.per_query_voxel_queries(31, width, grid, extent, scale, jax.random.key(0), skip=1)
    # the model uses it: the paper variant's queries sit at the 8 x 8 x 4 voxel centres of the data ball
    small = dict(width=16, heads=2, latent_dim=16, num_gaussians=4, head_width=8, head_depth=1, encoder_depth=0,
                 decoder_depth=0)
    queries = jax.jit(lambda: can3tok.Can3Tok(  # only the queries are computed (the other inits are dead code)
        variant="tiny", query_init="per_query", query_grid=(8, 8, 4), query_grid_extent=3.0, query_grid_scale=0.1,
        rngs=nnx.Rngs(0), **small).queries[...])()
    np.testing.assert_allclose(np.asarray(queries)[1:, :3], can3tok.voxel_centres((8, 8, 4), 3.0)[:16] * 0.1,
                               rtol=1e-6, atol=1e-7)
    # the release init stays the public code's: every row holds the whole flattened grid
    r = np.asarray(jax.jit(lambda: can3tok.Can3Tok(variant="tiny", rngs=nnx.Rngs(0), **dict(small, width=24))
                           .queries[...])())
    ax = np.linspace(-8, 8, 2)
    flat = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1) * 0.01
    np.testing.assert_allclose(r[:, :24], np.broadcast_to(flat, (r.shape[0], 24)), rtol=1e-6)
    with pytest.raises(ValueError, match="query_init"):
        can3tok.Can3Tok(variant="tiny", query_init="random", rngs=nnx.Rngs(0))


def test_paper_anchor_extent_follows_the_radius():
    c = load_config(f"{CONFIG}:variant=paper")
    c.update_from_flattened_dict({"data.gaussians.radius": 4.0})  # as --config.data.gaussians.radius=4 does
    assert c.model.anchor_extent == c.model.query_grid_extent == 4.0
    np.testing.assert_allclose(c.model.query_grid_scale, 0.08 / 4.0)
    task = AutoencodeTask(c)
    arch = dict(can3tok.VARIANTS["paper"], **task.overrides)
    assert arch["anchor_grid"] == 40 and arch["anchor_extent"] == 4.0
    # anchors are the 40^3 cell centres over [-4, 4]^3: a point in cell (0, 20, 39) -> its centre (numpy)
    size = 8.0 / 40
    pts = np.array([[-3.99, 0.01, 3.99], [-10.0, 0.0, 10.0]], np.float32)
    got = np.asarray(can3tok.voxel_anchor(jnp.asarray(pts), arch["anchor_grid"], arch["anchor_extent"]))
    want = (np.array([[0, 20, 39], [0, 20, 39]]) + 0.5) * size - 4.0
    np.testing.assert_allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------------------------------ sampled evaluation


def random_model(task):
    """The task's model with random parameters filled in from numpy (no initialiser compiled: fast on CPU)."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    r = np.random.default_rng(0)
    pure = jax.tree.map(lambda x: jnp.asarray(r.standard_normal(x.shape, np.float32) / np.sqrt(max(x.shape[0], 1))
                                              if x.ndim > 1 else 1.0 + 0.1 * r.standard_normal(x.shape, np.float32)),
                        nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, pure)
    return nnx.merge(graphdef, params)


def test_sampled_evaluation_is_deterministic_and_differs_from_the_mean(scenes):
    c = small_config("variant=release", scenes)
    task = AutoencodeTask(c)
    assert task.eval_posterior == "sample"
    model = random_model(task)
    rng = np.random.default_rng(0)
    rows = jnp.asarray(rng.normal(size=(4, N, 18)).astype(np.float32))
    ids = jnp.asarray([7, 3, 11, 5], jnp.int32)
    ev = nnx.jit(lambda m, b: task.evaluate_examples(m, b, None)["l2"])
    a = np.asarray(ev(model, {"gaussians": rows, "scene_index": ids}))
    b = np.asarray(ev(model, {"gaussians": rows, "scene_index": ids}))
    np.testing.assert_array_equal(a, b)  # deterministic
    # the noise belongs to the scene: other batch order / size, same per-scene values
    perm = np.array([2, 0, 3, 1])
    c2 = np.asarray(ev(model, {"gaussians": rows[perm], "scene_index": ids[perm]}))
    np.testing.assert_allclose(c2, a[perm], rtol=1e-5)
    # = the model's sample with the noises drawn from fold_in(key(eval_seed), scene_index)
    eps_t, eps_l = task.eval_noise({"gaussians": rows, "scene_index": ids}, model.config)
    k = jax.random.fold_in(jax.random.key(c.metrics.eval_seed), 11)
    np.testing.assert_array_equal(np.asarray(eps_t[2]), np.asarray(jax.random.normal(jax.random.fold_in(k, 0),
                                                                                      eps_t.shape[1:])))
    # another seed draws other noise; the posterior mean gives other figures
    seeded = AutoencodeTask(small_config("variant=release", scenes, **{"metrics.eval_seed": 1}))
    assert not np.allclose(seeded.eval_noise({"gaussians": rows, "scene_index": ids}, model.config)[1], eps_l)
    mean_task = AutoencodeTask(small_config("variant=release", scenes, **{"metrics.eval_posterior": "mean"}))
    m = np.asarray(nnx.jit(lambda mo, x: mean_task.evaluate_examples(mo, x, None)["l2"])(
        model, {"gaussians": rows, "scene_index": ids}))
    assert np.abs(m - a).max() > 1e-3 * np.abs(m).max()
    with pytest.raises(ValueError, match="config.metrics.eval_posterior"):
        AutoencodeTask(small_config("variant=release", scenes, **{"metrics.eval_posterior": "mode"}))
