"""3DRAE / 3DDiT evaluation on random tiny models (no training): the per-scene depth, Chamfer and baseline values
against numpy / scipy on the decoded views; the view-count sweep (same targets, more context views, capped by the
frames) against the task evaluated on hand-made examples; 3DDiT's per-condition sample figures and diversity
against separately drawn samples."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.spatial import cKDTree

pytest.importorskip("pybullet")

from scene3d import evaluate  # noqa: E402
from scene3d.data import multiview  # noqa: E402
from scene3d.tasks.dit3d import DiT3DTask  # noqa: E402
from scene3d.tasks.rae3d import RAE3DTask  # noqa: E402
from tests.tasks.test_rae3d_task import tiny_config  # noqa: E402

TINY = {"model.num_tokens": 8, "model.dim": 32, "model.dec_dim": 32, "model.dec_depth": 1}


def _psnr(a, b):
    return 10 * np.log10(1.0 / ((a - b) ** 2).mean(axis=(-3, -2, -1)))


def _batch(rng, b=2, v=2, s=28):
    batch = {}
    for part in ("context", "target"):
        batch[f"{part}_images"] = rng.uniform(-1, 1, (b, v, s, s, 3)).astype(np.float32)
        c2w = np.tile(np.eye(4, dtype=np.float32), (b, v, 1, 1))
        c2w[..., :3, 3] = rng.normal(0, 0.2, (b, v, 3))
        batch[f"{part}_c2w"] = c2w
        batch[f"{part}_intrinsics"] = np.tile(np.float32([1.0, 1.0, 0.5, 0.5]), (b, v, 1))
        batch[f"{part}_points"] = (rng.normal(size=(b, v, s, s, 3)) + [0, 0, 3]).astype(np.float32)
        batch[f"{part}_mask"] = rng.uniform(size=(b, v, s, s)) < 0.5
    if b > 1:
        batch["target_mask"][1] = False  # scene 1: no target depth
    return batch


def test_rae3d_depth_chamfer_and_baselines_vs_numpy(tmp_path):
    config = tiny_config(tmp_path, **TINY, **{"metrics.chamfer_points": 0, "metrics.baselines": 3})
    task = RAE3DTask(config)
    rng = np.random.default_rng(0)
    train_views = rng.uniform(0, 1, (6, 28, 28, 3)).astype(np.float32)
    task.training_target_images = lambda count: train_views[:2 * count]  # 3 examples x 2 target views
    model = task.build_model(nnx.Rngs(0))
    batch = _batch(rng)
    ex, dec = jax.tree.map(np.asarray, nnx.jit(lambda m, x: (
        task.evaluate_examples(m, x, None), task.render(m, x, None, with_context=True)[0]))(model, batch))
    v = 2
    gt = (batch["target_images"].astype(np.float64) + 1) / 2
    ctx_mean = ((batch["context_images"].astype(np.float64) + 1) / 2).mean(1, keepdims=True)
    np.testing.assert_allclose(ex["psnr_context_mean"], _psnr(ctx_mean, gt).mean(1), rtol=1e-5)
    np.testing.assert_allclose(ex["psnr_mean_image"], _psnr(train_views.mean(0), gt).mean(1), rtol=1e-5)
    # depth: z of the ground-truth points in each target camera; median scale alignment per view
    absrel, delta = [], []
    for j in range(v):
        c2w = batch["target_c2w"][0, j].astype(np.float64)
        z = ((batch["target_points"][0, j].astype(np.float64) - c2w[:3, 3]) @ c2w[:3, :3])[..., 2]
        m = batch["target_mask"][0, j] & (z > 0)
        p = dec["depth"][0, v + j][m].astype(np.float64)
        a = p * np.median(z[m]) / np.median(p)
        absrel.append(np.mean(np.abs(a - z[m]) / z[m]))
        delta.append(np.mean(np.maximum(a / z[m], z[m] / a) < 1.25))
    np.testing.assert_allclose(ex["depth_absrel"][0], np.mean(absrel), rtol=1e-4)
    np.testing.assert_allclose(ex["depth_delta1"][0], np.mean(delta), rtol=1e-5)
    assert np.isnan(ex["depth_absrel"][1]) and list(ex["depth_views"]) == [2, 0]
    # Chamfer of the fused point maps of all four decoded views (chamfer_all) and of the two target views (chamfer,
    # NaN for scene 1), over the valid ground-truth pixels
    for i in range(2):
        m = np.concatenate([batch["context_mask"][i], batch["target_mask"][i]])
        gt_pts = np.concatenate([batch["context_points"][i], batch["target_points"][i]])
        for name, sl in (("chamfer_all", slice(None)), ("chamfer", slice(v, None))):
            if not m[sl].any():
                assert np.isnan(ex[name][i])
                continue
            p, q = dec["points"][i][sl][m[sl]], gt_pts[sl][m[sl]]
            want = 0.5 * (cKDTree(q).query(p)[0].mean() + cKDTree(p).query(q)[0].mean())
            np.testing.assert_allclose(ex[name][i], want, rtol=1e-4, err_msg=f"{name} of scene {i}")
    split = task.summarize_examples(ex, 2)
    np.testing.assert_allclose(split["depth_absrel"], np.mean(absrel), rtol=1e-4)  # scene 1 has no depth views
    np.testing.assert_allclose(split["chamfer_all"], ex["chamfer_all"].mean(), rtol=1e-6)
    np.testing.assert_allclose(split["chamfer"], ex["chamfer"][0], rtol=1e-6)  # the scenes that have it
    assert "depth_views" not in split and "median" in task.evaluation_convention(2)["summary"]
    no_depth = task.summarize_examples({**ex, "depth_views": np.zeros(2), "depth_absrel": np.full(2, np.nan)}, 2)
    assert "depth_absrel" not in no_depth  # nothing had depth: no figure


def _scene(rng, frames=7, s=28):
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 1, frames)
    return {"scene_id": f"s{rng.integers(1000)}", "images": rng.integers(0, 255, (frames, s, s, 3), np.uint8),
            "c2w": c2w, "intrinsics": np.tile([1.0, 1.0, 0.5, 0.5], (frames, 1)),
            "depth": rng.uniform(1, 3, (frames, s, s)).astype(np.float32)}


def test_views_sweep_same_targets_more_views(tmp_path):
    for f, vt, n in ((24, 2, 2), (24, 2, 16), (7, 2, 5), (9, 1, 3)):
        ctx, tgt = evaluate.sweep_frames(f, vt, n)
        assert len(ctx) == n and len(tgt) == vt and ctx[0] == 0 and not set(ctx) & set(tgt)
        assert 0 not in tgt and f - 1 not in tgt
        assert list(tgt) == list(evaluate.sweep_frames(f, vt, 2)[1])  # the same targets whatever n
    config = tiny_config(tmp_path, **TINY, **{"metrics.baselines": 0})
    task = RAE3DTask(config)
    seen = []  # shapes at trace time

    def values(model, batch, rng):  # stands in for the model: what the sweep feeds the task, per scene
        seen.append(batch["context_images"].shape)
        return {"target_mean": jnp.mean(batch["target_images"], axis=(1, 2, 3, 4)),
                "context_views": jnp.full(batch["context_images"].shape[:1], batch["context_images"].shape[1],
                                          jnp.float32),
                "first_view_mean": jnp.mean(batch["context_images"][:, 0], axis=(1, 2, 3))}

    task.evaluate_examples = values
    rng = np.random.default_rng(1)
    source = [_scene(rng), _scene(rng, frames=8), _scene(rng, frames=9)]
    out = evaluate.views_sweep(task, None, config, "3,8,2", source=source, batch_size=2, progress=None)
    assert out["counts"] == [2, 3] and out["dropped"] == [8] and out["max_views"] == 5  # 7 frames - 2 targets
    # traced once per count with batches of 2 (the second of the 3 scenes padded): 3 values per count
    assert [s[:2] for s in seen] == [(2, 2), (2, 3)]
    views = multiview.ViewConfig.from_config(config.data.views)
    for n in (2, 3):
        per = out["per_example"][n]
        assert per["context_views"] == [n, n, n]
        for i, sc in enumerate(source):
            ctx, tgt = evaluate.sweep_frames(multiview.num_frames(sc), 2, n)
            ex = multiview.make_views(sc, ctx, tgt, views)
            np.testing.assert_allclose(per["target_mean"][i], ex["target"]["images"].mean(), rtol=1e-5)
            np.testing.assert_allclose(per["first_view_mean"][i], ex["context"]["images"][0].mean(), rtol=1e-5)
        np.testing.assert_allclose(out["figures"][n]["target_mean"], np.mean(per["target_mean"]), rtol=1e-6)
    # the same targets and the same first (reference) view whatever the count
    assert out["per_example"][2]["target_mean"] == out["per_example"][3]["target_mean"]
    assert out["per_example"][2]["first_view_mean"] == out["per_example"][3]["first_view_mean"]
    out["figures"] = {n: {"psnr": 10.0 + n, "chamfer": 0.5} for n in out["counts"]}
    text = evaluate.sweep_table(out).splitlines()
    assert text[0].split() == ["views", "psnr", "chamfer"] and text[2].split() == ["2", "12", "0.5"]
    with pytest.raises(ValueError, match="at most 5 context views"):
        evaluate.views_sweep(task, None, config, "8", source=source, progress=None)


def test_dit3d_samples_per_condition_and_diversity_vs_separate_samples(tmp_path):
    config = tiny_config(tmp_path, "configs/dit3d.py:runlocal", **{
        "tokenizer.model.num_tokens": 8, "tokenizer.model.dim": 32, "tokenizer.model.dec_dim": 32,
        "tokenizer.model.dec_depth": 1, "model.dim": 32, "model.depth": 1, "flow.sample_steps": 2,
        "metrics.eval_conditions": ("one_view", "trajectory"), "metrics.eval_seeds": 2})
    task = DiT3DTask(config)
    model = task.build_model(nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch(np.random.default_rng(2), b=1).items()}
    key = jax.random.key(5)
    got = jax.tree.map(float, nnx.jit(lambda m, b: task.condition_samples(m, b, key))(model, batch))
    assert {k for k in got if k.endswith("one_view")} == {"sample_psnr_one_view", "sample_ssim_one_view",
                                                          "diversity_std_one_view"}
    assert "sample_psnr_views_trajectory" not in got and "sample_psnr" in got

    def separate(m, b, view_mask, traj_mask, seed_key):  # one sample per call: one compiled program
        tok = task.sample(m, task.cond(m, b, view_mask, traj_mask), seed_key, batch_size=1)
        return task.decode(m, tok, b["target_c2w"], b["target_intrinsics"], (28, 28))["images"]

    fn = nnx.jit(separate)
    gt = (np.asarray(batch["target_images"], np.float64) + 1) / 2
    for mode in ("one_view", "trajectory", "views_trajectory"):
        masks = task._masks(batch, mode)
        imgs = np.stack([np.clip((np.asarray(fn(model, batch, *masks, jax.random.fold_in(key, 1 + s)),
                                             np.float64) + 1) / 2, 0, 1) for s in range(2)])
        if mode == "views_trajectory":
            np.testing.assert_allclose(got["sample_psnr"], _psnr(imgs[0], gt).mean(), rtol=1e-4)
            continue
        np.testing.assert_allclose(got[f"sample_psnr_{mode}"], _psnr(imgs, gt).mean(), rtol=1e-4)
        np.testing.assert_allclose(got[f"diversity_std_{mode}"], imgs.std(0).mean(), rtol=1e-3, atol=1e-6)
    rows = task.summary_rows(got)
    (table,) = rows.values()
    assert [r[0] for r in table] == ["condition", "one_view", "trajectory"]
