"""python -m scene3d.tools.latent_analysis on a Can3Tok run trained for two steps (configs/can3tok.py:runlocal
shrunk to 32-Gaussian crops of 8 synthetic PLY scenes): the files and their counts, the rotations against scipy,
the rows against the training pipeline and the latents against the model, determinism, the PCA path against
scikit-learn's PCA and the fallback when scikit-learn is missing, clean errors; and the scatter-plot helpers."""
import colorsys
import dataclasses
import json
import pathlib
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from scene3d.core import config as config_lib
from scene3d.data import gs_pipeline, splat_io
from scene3d.geometry import gaussians as gs
from scene3d.geometry import so3
from scene3d.render import plots
from scene3d.tasks import stage1
from scene3d.tools import latent_analysis as la

REPO = pathlib.Path(__file__).resolve().parents[2]
N = 32  # Gaussians per crop
TINY = {"data.gaussians.num_gaussians": N, "data.gaussians.knn": 4, "model.num_gaussians": N, "model.width": 32,
        "model.head_width": 32, "model.num_latents": 8, "model.latent_dim": 32, "render.size": 24,
        "global_batch_size": 8, "total_steps": 2, "ckpt_every": 2, "log_every": 1, "eval_every": 0,
        "async_checkpoint": False, "optim.warmup_steps": 1, "metrics.baselines": 64}


def _scene(seed: int, n: int = 96) -> gs.Gaussians:
    """An opaque blob of n Gaussians with a dominant random colour (different per seed)."""
    rng = np.random.default_rng(seed)
    cols = np.where((np.arange(n) < 0.8 * n)[:, None], rng.uniform(0.1, 0.9, 3), 0.5)
    return gs.Gaussians(xyz=rng.normal(size=(n, 3)) * rng.uniform(0.5, 2, 3), f_dc=gs.rgb_to_dc(cols),
                        opacity=np.full(n, 3.0), scale=rng.normal(-2.0, 0.1, (n, 3)), rot=rng.normal(size=(n, 4)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from scene3d import train
    root = tmp_path_factory.mktemp("latent_analysis")
    scenes = root / "scenes"  # 8 PLY scenes of 96 Gaussians
    scenes.mkdir()
    for i in range(8):
        splat_io.write_ply(scenes / f"scene_{i}.ply", _scene(i))
    c = config_lib.load_config(str(REPO / "configs" / "can3tok.py") + ":runlocal")
    c.data = dict(name="ply", paths=str(scenes), eval_paths=str(scenes), gaussians=c.data.gaussians.to_dict())
    c.update_from_flattened_dict(TINY)
    workdir = root / "run"
    train.train_and_evaluate(c, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def default_run(run_dir):
    """The tool with its defaults (36 interpolated + 200 random rotations, t-SNE) on scene 1 of the eval split."""
    return la.main([f"--workdir={run_dir}", "--scene=1"])


def test_outputs_and_counts(run_dir, default_run):
    rec, out = default_run, pathlib.Path(default_run["out"])
    assert out == run_dir / "latent_analysis"
    # 8 scenes in the split: the query and 7 others, each unrotated + 4 rotations
    assert rec["counts"] == {"interp": 36, "random": 200, "other": 7 * 5}
    assert rec["method"] == "tsne" and rec["query"] == "scene_1" and len(rec["others"]) == 7
    assert "scene_1" not in rec["others"]
    for key in ("embedding", "rotation", "sheet"):
        with Image.open(out / rec["files"][key]) as im:
            im.load()
            assert im.mode == "RGB" and min(im.size) > 300
            assert len(im.getcolors(1 << 20)) > 40  # the hue ramp, the palette, text: not a blank panel
    saved = json.loads((out / "latent_analysis.json").read_text())
    assert saved["counts"] == rec["counts"] and saved["figures"] == pytest.approx(rec["figures"])
    lines = (out / "embedding.csv").read_text().splitlines()
    assert len(lines) == 1 + 271
    groups = [ln.split(",")[0] for ln in lines[1:]]
    assert groups.count("interp") == 36 and groups.count("random") == 200 and groups.count("other") == 35
    z = np.load(out / "latents.npz")
    assert z["latents"].shape == (271, 32) and np.isfinite(z["latents"]).all()
    np.testing.assert_allclose(np.array([ln.split(",")[8:10] for ln in lines[1:]], float), z["xy"], rtol=1e-5,
                               atol=1e-5)
    assert np.isfinite(z["xy"]).all() and len(np.unique(z["xy"].round(6), axis=0)) > 200


def test_rotations_against_scipy(default_run):
    ex = default_run["_arrays"]["examples"]
    interp = ex.rotations[ex.group == 0]
    want = Rotation.from_euler("y", (np.arange(36) * 10.0)[:, None], degrees=True).as_matrix()
    np.testing.assert_allclose(interp, want, atol=1e-12)
    steps = Rotation.from_matrix(interp[:-1]).inv() * Rotation.from_matrix(interp[1:])
    np.testing.assert_allclose(np.degrees(steps.magnitude()), 10.0, atol=1e-9)  # evenly spaced ...
    axes = steps.as_rotvec() / steps.magnitude()[:, None]
    np.testing.assert_allclose(axes, np.broadcast_to([0.0, 1.0, 0.0], axes.shape), atol=1e-9)  # ... about y
    np.testing.assert_allclose(default_run["interp_angles_deg"], np.arange(36) * 10.0)
    rand = ex.rotations[ex.group == 1]
    np.testing.assert_allclose(rand @ np.swapaxes(rand, -1, -2), np.broadcast_to(np.eye(3), rand.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rand), 1.0, atol=1e-9)
    assert np.abs(rand.mean(0)).max() < 0.2  # Haar: E[R] = 0 (each entry's sample mean has std ~0.04 here)
    np.testing.assert_allclose(ex.angles[ex.group == 1], np.degrees(Rotation.from_matrix(rand).magnitude()),
                               atol=1e-6)
    other = ex.group == 2
    np.testing.assert_allclose(ex.rotations[other & (ex.index == 0)], np.broadcast_to(np.eye(3), (7, 3, 3)))


def test_figures_against_scipy_distances(default_run):
    from scipy.spatial.distance import cdist, pdist
    ex, z = default_run["_arrays"]["examples"], default_run["_arrays"]["latents"].astype(np.float64)
    fig = default_run["figures"]
    interp, random = z[:36], z[36:236]
    unrotated = z[[0] + [236 + 5 * k for k in range(7)]]  # the query at 0 deg, each other scene's first copy
    assert (ex.index[[236 + 5 * k for k in range(7)]] == 0).all()
    np.testing.assert_allclose(fig["interp_pairs"], pdist(interp).mean(), rtol=1e-6)
    np.testing.assert_allclose(fig["interp_step"], np.linalg.norm(np.diff(interp, axis=0), axis=1).mean(), rtol=1e-6)
    np.testing.assert_allclose(fig["random_pairs"], pdist(random).mean(), rtol=1e-6)
    np.testing.assert_allclose(fig["other_rotated_pairs"],
                               np.mean([pdist(z[236 + 5 * k:241 + 5 * k]).mean() for k in range(7)]), rtol=1e-6)
    np.testing.assert_allclose(fig["scene_pairs"], pdist(unrotated).mean(), rtol=1e-6)
    np.testing.assert_allclose(fig["random_vs_scenes"], pdist(random).mean() / pdist(unrotated).mean(), rtol=1e-6)
    nearest = cdist(unrotated[:1], unrotated[1:]).min()
    np.testing.assert_allclose(fig["query_nearest_scene"], nearest, rtol=1e-6)
    from_query = cdist(unrotated[:1], random)[0]
    np.testing.assert_allclose(fig["random_from_query"], from_query.mean(), rtol=1e-6)
    assert fig["random_within_nearest"] == pytest.approx(np.mean(from_query < nearest))


def _scene_with_sh(seed=0, n=60):
    rng = np.random.default_rng(seed)
    return gs.Gaussians(xyz=rng.normal(size=(n, 3)) * 2 + 1, f_dc=rng.normal(size=(n, 3)),
                        opacity=rng.normal(size=n), scale=rng.normal(-1.0, 0.3, (n, 3)),
                        rot=rng.normal(size=(n, 4)), f_rest=rng.normal(size=(n, 3, 3)))


@pytest.mark.parametrize("layout", [dict(order="kdtree", rows="raw", sh_degree=0),
                                    dict(order="voxel", rows="release18", sh_degree=1)])
def test_rows_match_the_training_pipeline(layout):
    g = _scene_with_sh()
    cfg = gs_pipeline.GaussianConfig(num_gaussians=40, knn=4, crop_seed="center", rotate=True, **layout)
    crop = la.prepare_scene(g, cfg)
    for seed in (3, 11):
        # training augmentation with crop_seed='center' draws only the rotation from its rng
        want = gs_pipeline.process_gaussians(g, cfg, np.random.default_rng(seed), training=True)
        R = so3.random_rotation(np.random.default_rng(seed), 1)[0]
        np.testing.assert_array_equal(la.rotated_rows(crop, cfg, R), want["gaussians"])
    # the identity is the evaluation path
    np.testing.assert_array_equal(la.rotated_rows(crop, cfg, np.eye(3)),
                                  gs_pipeline.process_gaussians(g, cfg, training=False)["gaussians"])
    # independently: the rotated rows are the unrotated ones with positions R x and quaternions q_R q (scipy)
    off = cfg.row_offset
    base = la.rotated_rows(crop, cfg, np.eye(3))[:, off:].astype(np.float64)
    R = Rotation.from_euler("zyx", [30, -50, 75], degrees=True)
    rot = la.rotated_rows(crop, cfg, R.as_matrix())[:, off:].astype(np.float64)
    back = rot[:, :3] @ R.as_matrix()  # R^T x, row-wise
    match = np.argmin(np.linalg.norm(back[:, None] - base[None, :, :3], axis=-1), axis=1)
    np.testing.assert_allclose(back, base[match, :3], atol=1e-5)
    np.testing.assert_allclose(rot[:, 3:10], base[match, 3:10], atol=1e-6)  # f_dc, opacity, log-scale unchanged
    q = lambda a: a[:, [11, 12, 13, 10]] / np.linalg.norm(a[:, 10:14], axis=1, keepdims=True)  # noqa: E731 xyzw
    err = (R * Rotation.from_quat(q(base[match]))).inv() * Rotation.from_quat(q(rot))
    assert err.magnitude().max() < 1e-5


def test_latents_are_the_models_posterior_means(run_dir, default_run):
    config, task, model, info = stage1.load_run(str(run_dir))
    cfg = gs_pipeline.GaussianConfig.from_config(config.data.gaussians)
    ex, latents = default_run["_arrays"]["examples"], default_run["_arrays"]["latents"]
    g = splat_io.read_ply(run_dir.parent / "scenes" / "scene_1.ply")
    crop = la.prepare_scene(g, cfg)
    picked = (0, 7, 36 + 5, 236 + 6)  # interp 0 (unrotated) and 7, random 5, other scene 2 rotated
    rows = []
    for i in picked:
        R = ex.rotations[i]
        rows.append(la.rotated_rows(crop if ex.scene[i] == 0 else ex.crops[ex.scene[i]], cfg, R))
        if ex.group[i] == 1:  # a random rotation: the pipeline's own training rows under it
            train_cfg = dataclasses.replace(cfg, rotate=True, crop_seed="center")
            want = gs_pipeline.process_gaussians(g, train_cfg, _GivenRotation(R), training=True)
            np.testing.assert_allclose(want["rotation"], R, atol=1e-6)
            np.testing.assert_allclose(rows[-1], want["gaussians"], atol=1e-5)
    assert ex.group[236 + 6] == 2 and ex.scene[236 + 6] == 2 and ex.index[236 + 6] == 1
    _, aux = model.encode(jnp.asarray(np.stack(rows)), sample_posterior=False)
    np.testing.assert_allclose(latents[list(picked)], np.asarray(aux["mean"]).reshape(len(picked), -1), rtol=1e-5,
                               atol=1e-5)


class _GivenRotation(np.random.Generator):
    """A numpy Generator whose normal draws are the quaternion of a given rotation, so that the pipeline's
    ``so3.random_rotation(rng, 1)`` returns that rotation (to rounding)."""

    def __init__(self, R):
        super().__init__(np.random.PCG64(0))
        self.q = so3.matrix_to_quat(np.asarray(R, np.float64))[None]

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        assert tuple(size) == (1, 4)
        return self.q.copy()


def _same_up_to_sign(a, ref, **tol):
    """Columns of ``a`` equal those of ``ref`` up to one sign per column (principal axes have no sign)."""
    np.testing.assert_allclose(a, ref * np.sign(np.sum(ref * a, axis=0)), **tol)


def test_pca_fallback_and_determinism(run_dir, tmp_path, monkeypatch):
    args = [f"--workdir={run_dir}", "--scene=2", "--num_interp=6", "--num_random=10", "--num_other=2",
            "--other_rotations=1", "--seed=5", "--batch_size=8"]
    pca = la.main(args + [f"--out={tmp_path / 'pca'}", "--method=pca"])
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # `from sklearn.manifold import ...` fails
    assert la._tsne_class() is None
    fallback = la.main(args + [f"--out={tmp_path / 'fallback'}", "--method=tsne"])
    assert fallback["method"] == "pca" and fallback["requested_method"] == "tsne"
    assert "scikit-learn" in fallback["method_note"] and pca["method_note"] is None
    assert fallback["counts"] == {"interp": 6, "random": 10, "other": 4}
    a, b = pca["_arrays"], fallback["_arrays"]
    np.testing.assert_array_equal(a["latents"], b["latents"])  # deterministic
    np.testing.assert_array_equal(a["xy"], b["xy"])
    np.testing.assert_array_equal(a["examples"].rotations, b["examples"].rotations)
    monkeypatch.undo()
    from sklearn.decomposition import PCA
    lat = a["latents"].astype(np.float64)
    _same_up_to_sign(a["xy"], PCA(n_components=2, svd_solver="full").fit_transform(lat), rtol=1e-6, atol=1e-8)
    _same_up_to_sign(b["xy_rot"], PCA(n_components=2, svd_solver="full").fit_transform(lat[:6]), rtol=1e-6,
                     atol=1e-8)  # the rotation panel: the 6 interpolated latents come first
    assert (tmp_path / "fallback" / "latent_analysis.png").is_file()


def test_bad_inputs(run_dir, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit, match="--scene 8: the 'eval' split .* holds 8 scenes"):
        la.main([f"--workdir={run_dir}", "--scene=8", f"--out={out}"])
    with pytest.raises(SystemExit, match="--scene .*notes.txt: expected a scene index or a 3DGS file"):
        la.main([f"--workdir={run_dir}", f"--scene={tmp_path / 'notes.txt'}", f"--out={out}"])
    with pytest.raises(SystemExit, match="no such file"):
        la.main([f"--workdir={run_dir}", f"--scene={tmp_path / 'missing.ply'}", f"--out={out}"])
    assert not out.exists()  # nothing written


# ------------------------------------------------------------------------------------------------ plots helpers


def test_cyclic_ramp_follows_the_hue_wheel():
    cols = plots.cyclic_ramp(12)
    ref = np.array([colorsys.hsv_to_rgb(k / 12, 1.0, 1.0) for k in range(12)]) * 235 + 10
    np.testing.assert_allclose(cols, ref, atol=0.51)
    assert cols.dtype == np.uint8 and len(np.unique(cols, axis=0)) == 12


def test_scatter_plot_draws_each_point_in_its_colour():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [np.nan, 0.0]])
    cols = plots.palette(4)
    img = np.asarray(plots.scatter_plot(xy, cols, radius=4, legend=[("a", cols[0], 3)], size=200))
    # equal axis scales: the point at x = 1 sits as far right of the first as the point at y = 1 sits above it
    centres = [np.argwhere((img[:, :200] == c).all(-1)).mean(0) for c in cols[:3]]
    np.testing.assert_allclose(centres[1] - centres[0], [0, centres[0][0] - centres[2][0]], atol=1.0)
    assert not (img[:, :200] == cols[3]).all(-1).any()  # the non-finite point is skipped
    with pytest.raises(ValueError, match="colors must be"):
        plots.scatter_plot(xy, cols[:2])
