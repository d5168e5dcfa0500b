"""Procedural tabletop scenes (scene3d.data.tabletop): deterministic, exactly N Gaussians, the objects standing on
the ground tile with the documented colours, disjoint train / eval sets, and the whole scene kept as the crop."""
import ml_collections
import numpy as np
import pytest

from scene3d import data
from scene3d.data import tabletop
from scene3d.geometry import gaussians as gs


def test_scenes_are_deterministic_and_well_formed():
    a = tabletop.make_scene(7, num_gaussians=300, seed=3, max_objects=2)
    b = tabletop.make_scene(7, num_gaussians=300, seed=3, max_objects=2)
    for x, y in zip(a, b):
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.xyz.shape == (300, 3) and a.f_dc.shape == (300, 3)
    rgb = np.asarray(gs.dc_to_rgb(a.f_dc))
    side = int(np.sqrt(300 // 3))
    ground, objects = slice(0, side * side), slice(side * side, None)
    # The ground is a regular grid on z = 0 over the tile, one muted colour.
    assert np.all(a.xyz[ground, 2] == 0) and np.abs(a.xyz[ground, :2]).max() < tabletop.GROUND_HALF
    assert len(np.unique(rgb[ground].round(5), axis=0)) == 1 and (0.15 <= rgb[ground]).all() and (rgb[ground] <= 0.85).all()
    # Objects stand on the ground (bases at z >= 0 up to rounding) inside the tile; saturated colours.
    assert a.xyz[objects, 2].min() > -1e-6 and np.abs(a.xyz[objects, :2]).max() < 0.9 + 0.5 + 1e-6
    assert (rgb[objects].max(1) >= 0.8 - 1e-5).all()
    # Opaque, isotropic, unrotated.
    assert np.all(a.opacity == tabletop.OPACITY_LOGIT) and np.all(a.scale[:, 0] == a.scale[:, 2])
    np.testing.assert_array_equal(a.rot, np.tile([1, 0, 0, 0], (300, 1)))
    # Different indices / seeds give different scenes.
    assert not np.array_equal(tabletop.make_scene(8, num_gaussians=300, seed=3).f_dc, a.f_dc)
    assert not np.array_equal(tabletop.make_scene(7, num_gaussians=300, seed=4).xyz, a.xyz)


def test_object_surfaces_are_the_fixed_unit_samples():
    """An object's points are its kind's fixed unit sample, scaled by a size in [0.25, 0.5] and moved to a spot in
    [-0.9, 0.9]^2 on the ground (z offset 0): solved by least squares against each kind's sample."""
    kinds = set()
    for i in range(30):
        g = tabletop.make_scene(i, num_gaussians=200, seed=0, max_objects=1)
        pts = g.xyz[8 * 8:].astype(np.float64)
        fits = []
        for kind in tabletop.KINDS:
            unit, _ = tabletop.unit_surface(kind, len(pts))
            uc, pc = unit - unit.mean(0), pts - pts.mean(0)
            size = float((uc * pc).sum() / (uc * uc).sum())
            offset = pts.mean(0) - size * unit.mean(0)
            fits.append((np.abs(unit * size + offset - pts).max(), kind, size, offset))
        err, kind, size, offset = min(fits)
        assert err < 1e-5 and 0.25 <= size <= 0.5 and abs(offset[2]) < 1e-5 and np.abs(offset[:2]).max() <= 0.9
        kinds.add(kind)
    assert kinds == set(tabletop.KINDS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="too few"):
        tabletop.make_scene(0, num_gaussians=8)
    with pytest.raises(ValueError, match="max_objects"):
        tabletop.TabletopSource(4, max_objects=0)
    with pytest.raises(ValueError, match="unknown object kind"):
        tabletop.unit_surface("torus", 10)
    with pytest.raises(IndexError):
        tabletop.TabletopSource(4)[4]


def test_source_splits_and_the_pipeline_keeps_the_whole_scene():
    dc = ml_collections.ConfigDict(dict(name="tabletop", num_train=5, num_eval=3, seed=0, max_objects=2,
                                        gaussians=dict(num_gaussians=96, order="kdtree", rows="raw", rotate=False,
                                                       crop_seed="random", knn=4)))
    train, held = data.get_source(dc, "train"), data.get_source(dc, "eval")
    assert (len(train), len(held)) == (5, 3)
    rec = train[2]
    assert rec["gaussians"].shape == (96, 14) and rec["scene_id"] == "tabletop-0-000002"
    assert not np.array_equal(held[2]["gaussians"], rec["gaussians"])
    (transform,) = data.get_transforms(dc, "train")
    ex = transform.random_map(rec, np.random.default_rng(0))
    # The example is the whole scene normalised (same rows as a set), in a canonical (k-d tree) order.
    norm, _ = gs.normalise_scene(gs.unpack(rec["gaussians"]), radius=1.0)
    want = gs.pack(norm).astype(np.float32)
    got = ex["gaussians"]
    key = lambda r: r[np.lexsort(r.T[::-1])]
    np.testing.assert_allclose(key(got), key(want), atol=1e-6)
    assert np.linalg.norm(got[:, :3], axis=1).max() <= 1.0 + 1e-6
