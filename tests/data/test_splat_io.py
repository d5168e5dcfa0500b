"""PLY / .splat I/O: the real fox.ply, synthetic files from an independent struct-based writer, malformed files."""
import logging
import os
import struct

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.special import expit

from scene3d.core import io as core_io
from scene3d.data import splat_io as S
from scene3d.geometry import gaussians as G

FOX_N = 50_000
FOX_HEADER = b"""ply
format binary_little_endian 1.0
comment Source: https://www.wakufactory.jp/wxr/splats/sample.html
comment License: CC0-1.0
element vertex 50000
property float x
property float y
property float z
property float f_dc_0
property float f_dc_1
property float f_dc_2
property float opacity
property float scale_0
property float scale_1
property float scale_2
property float rot_0
property float rot_1
property float rot_2
property float rot_3
end_header
"""


@pytest.fixture(scope="module")
def fox_path(request):
    shared = request.getfixturevalue("shared_dir")
    p = shared / "data" / "fox_3dgs" / "fox.ply"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


@pytest.fixture(scope="module")
def fox_raw(fox_path):
    """Independent parse: the known header, then 50000 x 14 little-endian float32."""
    b = fox_path.read_bytes()
    assert b.startswith(FOX_HEADER)
    return np.frombuffer(b[len(FOX_HEADER):], dtype="<f4").reshape(FOX_N, 14)


# ----------------------------------------------------------------------------------- independent writer

_FMT = {"float": "f", "double": "d", "uchar": "B", "int": "i"}


def ref_write_ply(path, props, n, comments=(), header=None):
    """Minimal writer: props is a list of (name, ply type, values (n,)); rows packed with struct."""
    lines = ["ply", "format binary_little_endian 1.0", *comments, f"element vertex {n}",
             *(f"property {t} {name}" for name, t, _ in props), "end_header"]
    if header is not None:
        lines = header
    fmt = "<" + "".join(_FMT[t] for _, t, _ in props)
    body = b"".join(struct.pack(fmt, *(v[i].item() for _, _, v in props)) for i in range(n))
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode())
        f.write(body)


def synthetic_props(rng, n, degree, normals, types=lambda name: "float"):
    k = G.num_rest_coeffs(degree)
    vals = {}
    for ax, name in enumerate("xyz"):
        vals[name] = rng.normal(size=n)
    if normals:
        for name in ("nx", "ny", "nz"):
            vals[name] = rng.normal(size=n)
    for i in range(3):
        vals[f"f_dc_{i}"] = rng.normal(size=n)
    for i in range(3 * k):
        vals[f"f_rest_{i}"] = rng.normal(size=n)
    vals["opacity"] = rng.normal(size=n)
    for i in range(3):
        vals[f"scale_{i}"] = rng.normal(size=n) - 3
    for i in range(4):
        vals[f"rot_{i}"] = rng.normal(size=n)
    props = []
    for name, v in vals.items():
        t = types(name)
        props.append((name, t, v.astype(np.float32 if t == "float" else np.float64)))
    return props


def expected_gaussians(props):
    v = {name: val for name, _, val in props}
    dtype = np.float64 if any(t == "double" for _, t, _ in props) else np.float32
    col = lambda names: np.stack([v[n].astype(dtype) for n in names], -1)  # noqa: E731
    k = sum(1 for n in v if n.startswith("f_rest_")) // 3
    # INRIA f_rest is channel-major: coefficient j of colour c is f_rest_{c*K + j}.
    f_rest = None
    if k:
        f_rest = np.stack([np.stack([v[f"f_rest_{c * k + j}"].astype(dtype) for c in range(3)], -1)
                           for j in range(k)], 1)
    return G.Gaussians(xyz=col("xyz"), f_dc=col(["f_dc_0", "f_dc_1", "f_dc_2"]), opacity=v["opacity"].astype(dtype),
                       scale=col(["scale_0", "scale_1", "scale_2"]), rot=col(["rot_0", "rot_1", "rot_2", "rot_3"]),
                       f_rest=f_rest, normals=col(["nx", "ny", "nz"]) if "nx" in v else None)


def assert_gaussians_equal(a, b):
    for field in G.Gaussians._fields:
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if y is not None:
            assert x.dtype == y.dtype, field
            np.testing.assert_array_equal(x, y, err_msg=field)


# ------------------------------------------------------------------------------------------------- fox


def test_fox_read(fox_path, fox_raw, caplog):
    with caplog.at_level(logging.WARNING):
        g, info = S.read_ply(fox_path, return_info=True)
    assert g.num_gaussians == FOX_N and g.sh_degree == 0 and g.normals is None and g.f_rest is None
    assert g.xyz.dtype == np.float32
    np.testing.assert_array_equal(g.xyz, fox_raw[:, 0:3])
    np.testing.assert_array_equal(g.f_dc, fox_raw[:, 3:6])
    np.testing.assert_array_equal(g.opacity, fox_raw[:, 6])
    np.testing.assert_array_equal(g.scale, fox_raw[:, 7:10])
    np.testing.assert_array_equal(g.rot, fox_raw[:, 10:14])
    np.testing.assert_array_equal(G.pack(g), fox_raw)  # INRIA degree-0 order == Can3Tok channel order
    assert info.num_inf_opacity == 37 and info.num_repaired == 0 and info.ignored_properties == ()
    assert "37" in caplog.text


def test_fox_roundtrip_bit_exact(fox_path, tmp_path):
    g, info = S.read_ply(fox_path, return_info=True)
    out = tmp_path / "fox.ply"
    S.write_ply(out, g, layout=info.layout)
    assert out.read_bytes() == fox_path.read_bytes()
    # Default INRIA layout: the same data bytes, header without the comments.
    S.write_ply(out, g)
    body = fox_path.read_bytes()[len(FOX_HEADER):]
    assert out.read_bytes() == FOX_HEADER.replace(b"comment Source: https://www.wakufactory.jp/wxr/splats/"
                                                  b"sample.html\ncomment License: CC0-1.0\n", b"") + body
    assert [p.name for p in tmp_path.iterdir()] == ["fox.ply"]  # no temp files left


def test_fox_repair(fox_path, fox_raw, caplog):
    with caplog.at_level(logging.WARNING):
        g, info = S.read_ply(fox_path, repair=True, return_info=True)
    assert info.num_inf_opacity == 37 and info.num_repaired == 37
    assert "clamped 37" in caplog.text
    inf = np.isinf(fox_raw[:, 6])
    assert inf.sum() == 37 and (fox_raw[inf, 6] > 0).all()
    assert np.isfinite(g.opacity).all()
    np.testing.assert_allclose(g.opacity[inf], S.MAX_OPACITY_LOGIT, rtol=1e-6)
    np.testing.assert_array_equal(g.opacity[~inf], fox_raw[~inf, 6])
    assert S.MAX_OPACITY_LOGIT > fox_raw[~inf, 6].max()  # clamp value above every finite logit in the file
    np.testing.assert_allclose(expit(S.MAX_OPACITY_LOGIT), 1 - 1e-6)


def test_fox_activations_in_range(fox_path):
    g = S.read_ply(fox_path)
    alpha = G.activate_opacity(g.opacity)
    assert ((alpha >= 0) & (alpha <= 1)).all()
    assert (alpha[np.isinf(g.opacity)] == 1).all()
    sig = G.activate_scale(g.scale)
    assert np.isfinite(sig).all() and (sig > 0).all()
    np.testing.assert_allclose(np.linalg.norm(G.normalise_quat(g.rot), axis=-1), 1, rtol=1e-6)
    rgb = G.dc_to_rgb(g.f_dc)
    assert np.isfinite(rgb).all() and ((rgb >= 0) & (rgb <= 1)).all(-1).mean() > 0.99
    sub = g.take(slice(0, 2000))
    cov = G.covariances(sub).astype(np.float64)
    # Independent float64 reference: scipy's quaternions are scalar-last.
    r = Rotation.from_quat(sub.rot[:, [1, 2, 3, 0]].astype(np.float64)).as_matrix()
    ref = np.einsum("nij,nj,nkj->nik", r, np.exp(2 * sub.scale.astype(np.float64)), r)
    err = np.abs(cov - ref).max((-1, -2)) / np.trace(ref, axis1=-2, axis2=-1)
    assert err.max() < 1e-5


def test_fox_splat(fox_path, tmp_path):
    g = S.read_ply(fox_path)
    S.write_splat(tmp_path / "fox.splat", g, sort=False)
    assert (tmp_path / "fox.splat").stat().st_size == 32 * FOX_N
    h = S.read_splat(tmp_path / "fox.splat")
    np.testing.assert_array_equal(h.xyz, g.xyz)
    np.testing.assert_allclose(G.activate_opacity(h.opacity), G.activate_opacity(g.opacity), atol=0.5 / 255 + 1e-6)


# ----------------------------------------------------------------------------------- synthetic PLY files


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("normals", [False, True])
def test_synthetic_inria(tmp_path, degree, normals):
    rng = np.random.default_rng(degree * 2 + normals)
    props = synthetic_props(rng, 11, degree, normals)
    p = tmp_path / "a.ply"
    ref_write_ply(p, props, 11)
    g, info = S.read_ply(p, return_info=True)
    assert_gaussians_equal(g, expected_gaussians(props))
    assert g.sh_degree == degree
    # Our writer's default layout is byte-identical to the independent writer's INRIA file.
    q = tmp_path / "b.ply"
    S.write_ply(q, g)
    assert q.read_bytes() == p.read_bytes()
    S.write_ply(q, g, layout=info.layout)
    assert q.read_bytes() == p.read_bytes()


@pytest.mark.parametrize("degree", [1, 3])
def test_synthetic_shuffled_mixed_types(tmp_path, degree):
    """Any property order, float and double, unknown extra properties and comments."""
    rng = np.random.default_rng(100 + degree)
    props = synthetic_props(rng, 9, degree, True, types=lambda n: "double" if sum(map(ord, n)) % 2 else "float")
    props = [props[i] for i in rng.permutation(len(props))]
    p = tmp_path / "a.ply"
    ref_write_ply(p, props, 9, comments=["comment made by a test", "obj_info shuffled"])
    g, info = S.read_ply(p, return_info=True)
    assert_gaussians_equal(g, expected_gaussians(props))
    q = tmp_path / "b.ply"
    S.write_ply(q, g, layout=info.layout)
    assert q.read_bytes() == p.read_bytes()  # order, types and comments reproduced
    # Unknown properties are skipped (and reported), the rest reads the same.
    extra = props[:3] + [("red", "uchar", rng.integers(0, 255, 9).astype(np.uint8)),
                         ("filter_3D", "float", rng.normal(size=9).astype(np.float32))] + props[3:]
    ref_write_ply(p, extra, 9)
    g2, info2 = S.read_ply(p, return_info=True)
    assert_gaussians_equal(g2, expected_gaussians(props))
    assert info2.ignored_properties == ("red", "filter_3D")


def test_write_ply_from_jax_and_layout_mismatch(tmp_path):
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    props = synthetic_props(rng, 5, 1, False)
    g = expected_gaussians(props)
    S.write_ply(tmp_path / "j.ply", G.Gaussians(*(None if a is None else jnp.asarray(a) for a in g)))
    assert_gaussians_equal(S.read_ply(tmp_path / "j.ply"), g)
    _, info = S.read_ply(tmp_path / "j.ply", return_info=True)
    with pytest.raises(ValueError, match="layout properties do not match"):
        S.write_ply(tmp_path / "k.ply", g._replace(f_rest=None), layout=info.layout)
    with pytest.raises(ValueError, match=r"gaussians\.rot: expected shape \(5, 4\)"):
        S.write_ply(tmp_path / "k.ply", g._replace(rot=np.zeros((5, 3))))
    assert not (tmp_path / "k.ply").exists()


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "scene.ply"
    target.write_bytes(b"old")

    def chunks():
        yield b"partial data"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        core_io.write_bytes(target, chunks())
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["scene.ply"]
    g = expected_gaussians(synthetic_props(np.random.default_rng(0), 4, 0, False))
    monkeypatch.setattr(core_io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError):
        S.write_ply(target, g)
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["scene.ply"]
    monkeypatch.undo()
    S.write_ply(target, g)
    assert_gaussians_equal(S.read_ply(target), g)


# ----------------------------------------------------------------------------------------- malformed PLY


def _good(tmp_path, degree=0, n=6, **kw):
    props = synthetic_props(np.random.default_rng(0), n, degree, False)
    p = tmp_path / "bad.ply"
    ref_write_ply(p, props, n, **kw)
    return p, props


def _header(props, n, first="ply", fmt="format binary_little_endian 1.0", count=None, end="end_header"):
    lines = [first, fmt, f"element vertex {count if count is not None else n}",
             *(f"property {t} {name}" for name, t, _ in props), end]
    return [x for x in lines if x is not None]


def _drop(props, name):
    return [p for p in props if p[0] != name]


MALFORMED = {
    "truncated": (lambda p, props: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
    "absurd_count": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6, count=10 ** 12)),
                     "declares 1000000000000 vertices"),
    "not_ply": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6, first="PLY")), "not a PLY"),
    "no_format": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6, fmt=None)), "format"),
    "big_endian": (lambda p, props: ref_write_ply(p, props, 6, header=_header(
        props, 6, fmt="format binary_big_endian 1.0")), "unsupported PLY format"),
    "ascii": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6, fmt="format ascii 1.0")),
              "unsupported PLY format"),
    "no_end_header": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6, end="end_heder")),
                      "end_header"),
    "empty": (lambda p, props: p.write_bytes(b""), "empty file"),
    "missing_rot_3": (lambda p, props: ref_write_ply(p, _drop(props, "rot_3"), 6), r"missing required .*rot_3"),
    "partial_normals": (lambda p, props: ref_write_ply(p, props + [("nx", "float", props[0][2])], 6), "normals"),
    "duplicate": (lambda p, props: ref_write_ply(p, props + [props[0]], 6), "duplicate"),
    "uchar_opacity": (lambda p, props: ref_write_ply(
        p, [(n, "uchar", np.zeros(6, np.uint8)) if n == "opacity" else (n, t, v) for n, t, v in props], 6),
        "'opacity' has type uchar"),
    "list_property": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6)[:-1] + [
        "property list uchar int vertex_indices", "end_header"]), "list"),
    "bad_property_line": (lambda p, props: ref_write_ply(p, props, 6, header=_header(props, 6)[:-1] + [
        "property float16 foo", "end_header"]), "bad property line"),
    "no_vertex": (lambda p, props: ref_write_ply(p, props, 6, header=[
        "ply", "format binary_little_endian 1.0", "element face 0", "end_header"]), "element vertex"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed(tmp_path, case):
    p, props = _good(tmp_path)
    make, pattern = MALFORMED[case]
    make(p, props)
    with pytest.raises(ValueError, match=pattern) as e:
        S.read_ply(p)
    assert str(p) in str(e.value)


def test_wrong_f_rest_count(tmp_path):
    props = synthetic_props(np.random.default_rng(0), 4, 1, False)  # f_rest_0..8
    p = tmp_path / "r.ply"
    ref_write_ply(p, _drop(props, "f_rest_8"), 4)  # 8 properties: no SH degree
    with pytest.raises(ValueError, match="wrong f_rest count 8") as e:
        S.read_ply(p)
    assert str(p) in str(e.value)
    ref_write_ply(p, [(n.replace("f_rest_4", "f_rest_40"), t, v) for n, t, v in props], 4)  # gap in indices
    with pytest.raises(ValueError, match="consecutive"):
        S.read_ply(p)
    six = [x for x in props if not x[0].startswith("f_rest_")] + [
        (f"f_rest_{i}", "float", props[0][2]) for i in range(6)]  # 6 = 3 x 2: still no SH degree
    ref_write_ply(p, six, 4)
    with pytest.raises(ValueError, match="wrong f_rest count 6"):
        S.read_ply(p)


@pytest.mark.parametrize("field,value,pattern", [("scale_1", np.nan, "NaN values in vertex property 'scale_1'"),
                                                 ("opacity", np.nan, "NaN values in vertex property 'opacity'"),
                                                 ("x", np.inf, "infinite values in vertex property 'x'"),
                                                 ("rot_0", -np.inf, "infinite values in vertex property 'rot_0'")])
def test_non_finite(tmp_path, field, value, pattern):
    props = synthetic_props(np.random.default_rng(0), 5, 0, False)
    for name, _, v in props:
        if name == field:
            v[3] = value
    p = tmp_path / "nf.ply"
    ref_write_ply(p, props, 5)
    with pytest.raises(ValueError, match=pattern + r".*first at vertex 3") as e:
        S.read_ply(p, repair=True)
    assert str(p) in str(e.value)


def test_negative_inf_opacity_repaired(tmp_path):
    props = synthetic_props(np.random.default_rng(0), 5, 0, False)
    dict((n, v) for n, _, v in props)["opacity"][[1, 4]] = [-np.inf, np.inf]
    p = tmp_path / "o.ply"
    ref_write_ply(p, props, 5)
    g, info = S.read_ply(p, repair=True, return_info=True)
    assert info.num_repaired == 2
    np.testing.assert_allclose(g.opacity[[1, 4]], [-S.MAX_OPACITY_LOGIT, S.MAX_OPACITY_LOGIT], rtol=1e-6)
    g0 = S.read_ply(p)
    assert g0.opacity[1] == -np.inf and g0.opacity[4] == np.inf


def test_preceding_element_skipped(tmp_path):
    """A fixed-size element before 'vertex' is skipped by byte count."""
    props = synthetic_props(np.random.default_rng(3), 4, 0, False)
    p = tmp_path / "pre.ply"
    header = ["ply", "format binary_little_endian 1.0", "element camera 2", "property double fx",
              "property uchar id", "element vertex 4", *(f"property {t} {n}" for n, t, _ in props), "end_header"]
    ref_write_ply(p, props, 4, header=header)
    raw = p.read_bytes()
    cut = raw.index(b"end_header\n") + len(b"end_header\n")
    p.write_bytes(raw[:cut] + struct.pack("<dBdB", 1.5, 1, 2.5, 2) + raw[cut:])
    assert_gaussians_equal(S.read_ply(p), expected_gaussians(props))


# ---------------------------------------------------------------------------------------------- .splat


def ref_splat_record(g, i):
    """Independent encoder for one Gaussian (reference layout, rounding to nearest)."""
    pos = [float(v) for v in g.xyz[i]]
    sc = [float(np.exp(np.float64(v))) for v in g.scale[i]]
    c0 = 0.28209479177387814
    rgba = [0.5 + c0 * float(v) for v in g.f_dc[i]] + [1 / (1 + np.exp(-float(g.opacity[i])))]
    q = np.asarray(g.rot[i], np.float64)
    q = q / np.sqrt((q ** 2).sum())
    b = lambda x: int(min(255, max(0, np.floor(x + 0.5))))  # noqa: E731
    return struct.pack("<6f8B", *pos, *sc, *(b(255 * c) for c in rgba), *(b(128 * v + 128) for v in q))


def test_splat_bytes_and_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    g = expected_gaussians(synthetic_props(rng, 40, 0, False))
    g = g._replace(f_dc=(rng.uniform(0.05, 0.95, (40, 3)) - 0.5).astype(np.float32) / 0.28209479177387814,
                   opacity=rng.uniform(-4, 4, 40).astype(np.float32))
    p = tmp_path / "a.splat"
    S.write_splat(p, g, sort=False)
    data = p.read_bytes()
    assert data == b"".join(ref_splat_record(g, i) for i in range(40))
    h = S.read_splat(p)
    np.testing.assert_array_equal(h.xyz, g.xyz)
    np.testing.assert_allclose(h.scale, g.scale, atol=1e-5)
    np.testing.assert_allclose(G.dc_to_rgb(h.f_dc), G.dc_to_rgb(g.f_dc), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(expit(h.opacity), expit(g.opacity), atol=0.5 / 255 + 1e-6)
    # Quantised quaternions: same rotation to within about a degree.
    qa, qb = G.normalise_quat(g.rot.astype(np.float64)), h.rot.astype(np.float64)
    assert (np.abs((qa * qb).sum(-1)) > np.cos(np.deg2rad(1.5) / 2)).all()
    np.testing.assert_allclose(np.linalg.norm(qb, axis=-1), 1, rtol=1e-6)


def test_splat_sorted_by_importance(tmp_path):
    rng = np.random.default_rng(6)
    g = expected_gaussians(synthetic_props(rng, 30, 2, True))
    S.write_splat(tmp_path / "s.splat", g)  # sort=True, SH degree 2 dropped
    h = S.read_splat(tmp_path / "s.splat")
    assert h.sh_degree == 0 and h.normals is None
    order = [int(np.flatnonzero((g.xyz == row).all(-1))[0]) for row in h.xyz]
    assert sorted(order) == list(range(30))
    importance = np.exp(g.scale.astype(np.float64).sum(-1)) * expit(g.opacity.astype(np.float64))
    assert (np.diff(importance[order]) <= 0).all()


def test_splat_malformed(tmp_path):
    p = tmp_path / "x.splat"
    p.write_bytes(b"\0" * 33)
    with pytest.raises(ValueError, match="not a multiple of 32") as e:
        S.read_splat(p)
    assert str(p) in str(e.value)
    p.write_bytes(struct.pack("<6f8B", 0, 0, 0, -1, 1, 1, 0, 0, 0, 0, 128, 128, 128, 128))
    with pytest.raises(ValueError, match="negative or non-finite scales"):
        S.read_splat(p)
    p.write_bytes(struct.pack("<6f8B", 0, 0, 0, 0, 1, 1, 0, 0, 0, 255, 128, 128, 128, 128))
    h = S.read_splat(p)  # zero scale clamped, all-128 quaternion -> identity, alpha 1 -> finite logit
    assert np.isfinite(h.scale).all() and np.isfinite(h.opacity).all()
    np.testing.assert_array_equal(h.rot, [[1, 0, 0, 0]])


def test_read_gaussians_dispatch(tmp_path):
    g = expected_gaussians(synthetic_props(np.random.default_rng(0), 3, 0, False))
    S.write_ply(tmp_path / "a.ply", g)
    assert_gaussians_equal(S.read_gaussians(tmp_path / "a.ply"), g)
    with pytest.raises(ValueError, match="unknown Gaussian splat file type"):
        S.read_gaussians(tmp_path / "a.obj")
