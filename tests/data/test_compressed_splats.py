"""Compressed 3DGS formats (issue 18): Niantic SPZ, PlayCanvas compressed PLY, PlayCanvas SOG.

Every check decodes the files with an independent decoder written here from the formats' descriptions (struct
unpacking, one Gaussian at a time) or writes the input with an independent encoder (SOG), and holds the round trip
to the precision each format promises:
  SPZ            positions 2^-13 (12 fraction bits), log scale 1/32, f_dc 0.5 / (0.15 * 255), alpha 0.5 / 255, SH
                 4.5 / 128 (degree 1, 5-bit buckets) and 8.5 / 128 (4-bit), rotations: 8-bit xyz (v2) or smallest-three
                 9-bit magnitudes (v3, v4)
  compressed PLY per chunk of 256: (max - min) / 2047 (x, z) and / 1023 (y) for positions and log scales, colour
                 range / 255, alpha 1/255, SH 1/32, quaternion components sqrt(2) / 1023
  SOG            16-bit log-space positions, codebook values exactly, 8-bit quaternion components
Malformed files (truncations, byte flips, header fields, declared counts the file cannot hold, a gzip bomb, texture
names leaving the folder, a zip member declaring a huge size) raise ValueError naming the file, or read valid
Gaussians. The CLI plumbing (`sample.write_samples(fmt=...)`, `reconstruct` / `inspect` input detection) is checked
on files written here.
"""
import gzip
import io
import json
import math
import os
import random
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from scene3d.data import compressed_ply as CP
from scene3d.data import inspect as INS
from scene3d.data import sog as SOG
from scene3d.data import splat_io as S
from scene3d.data import spz as SPZ
from scene3d.geometry import gaussians as G
from tests.conftest import shared_data
from tests.data.test_fuzz_readers import _quiet  # noqa: F401 - autouse: keeps the readers' warnings quiet

C0 = 0.28209479177387814
SQRT1_2 = math.sqrt(0.5)


@pytest.fixture(scope="module")
def scene(shared_dir):
    """700 Gaussians of fox.ply (the first ones: spread over the scene) with random rotations and SH degree 3
    coefficients in (-0.9, 0.9) (SPZ's 8-bit SH range is [-1, 1))."""
    g = S.read_ply(shared_data(shared_dir, "fox_3dgs") / "fox.ply", repair=True).take(np.arange(0, 50000, 71))
    rng = np.random.default_rng(0)
    n = g.xyz.shape[0]
    rot = Rotation.random(n, random_state=1).as_quat()[:, [3, 0, 1, 2]]  # scipy x y z w -> w x y z
    return g._replace(rot=rot.astype(np.float32), f_rest=rng.uniform(-0.9, 0.9, (n, 15, 3)).astype(np.float32),
                      opacity=np.clip(g.opacity, -8, 8))


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _rot_err(a, b):
    """Largest 1 - |<q_a, q_b>| (q and -q are the same rotation)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    return float((1 - np.abs((a * b).sum(-1))).max())


# ------------------------------------------------------------------------------------------------------- SPZ


def _spz_payload(path):
    """(header fields dict, attribute bytes) by the spec: gzip of a 16-byte header + blocks, or NGSP v4."""
    raw = path.read_bytes()
    if raw[:4] == b"NGSP":
        import zstandard
        magic, version, n, deg, fb, flags, nstreams, toc, reserved = struct.unpack_from("<IIIBBBBI12s", raw)
        assert (toc, reserved) == (32, bytes(12))
        entries = [struct.unpack_from("<QQ", raw, toc + 16 * i) for i in range(nstreams)]
        off, blocks = toc + 16 * nstreams, []
        for csize, usize in entries:
            blocks.append(zstandard.ZstdDecompressor().decompress(raw[off:off + csize], max_output_size=usize))
            assert len(blocks[-1]) == usize
            off += csize
        assert off == len(raw)
        body = b"".join(blocks)
    else:
        assert raw[:2] == b"\x1f\x8b"
        data = gzip.decompress(raw)
        magic, version, n, deg, fb, flags, reserved = struct.unpack_from("<IIIBBBB", data)
        assert reserved == 0
        body, nstreams = data[16:], None
    return dict(magic=magic, version=version, n=n, degree=deg, fbits=fb, flags=flags, nstreams=nstreams), body


def _spz_decode(fields, body):
    """Independent per-Gaussian decoder (README 'File Format'): -> dict of float64 arrays, x y z w quaternions."""
    n, v, deg, fb = fields["n"], fields["version"], fields["degree"], fields["fbits"]
    dim = (deg + 1) ** 2 - 1
    rb = 3 if v < 3 else 4
    off = {"pos": 0}
    off["alpha"] = off["pos"] + 9 * n
    off["color"] = off["alpha"] + n
    off["scale"] = off["color"] + 3 * n
    off["rot"] = off["scale"] + 3 * n
    off["sh"] = off["rot"] + rb * n
    assert len(body) == off["sh"] + 3 * dim * n
    out = {k: [] for k in ("xyz", "alpha", "f_dc", "scale", "xyzw", "sh")}
    for i in range(n):
        p = body[off["pos"] + 9 * i: off["pos"] + 9 * i + 9]
        out["xyz"].append([int.from_bytes(p[3 * j:3 * j + 3], "little", signed=True) / 2 ** fb for j in range(3)])
        out["alpha"].append(body[off["alpha"] + i] / 255)
        out["f_dc"].append([(body[off["color"] + 3 * i + j] / 255 - 0.5) / 0.15 for j in range(3)])
        out["scale"].append([body[off["scale"] + 3 * i + j] / 16 - 10 for j in range(3)])
        r = body[off["rot"] + rb * i: off["rot"] + rb * i + rb]
        if v < 3:
            xyz = [b / 127.5 - 1 for b in r]
            q = xyz + [math.sqrt(max(0.0, 1 - sum(c * c for c in xyz)))]
        else:
            word = struct.unpack("<I", r)[0]
            big = word >> 30
            q = [0.0] * 4
            rest = [k for k in range(4) if k != big]
            for j, k in enumerate(rest):  # first stored component in the highest 10 bits
                field = (word >> (10 * (2 - j))) & 0x3FF
                q[k] = (-1 if field >> 9 else 1) * SQRT1_2 * (field & 0x1FF) / 511
            q[big] = math.sqrt(max(0.0, 1 - sum(c * c for c in q)))
        out["xyzw"].append(q)
        s = body[off["sh"] + 3 * dim * i: off["sh"] + 3 * dim * (i + 1)]
        out["sh"].append([[(s[3 * k + c] - 128) / 128 for c in range(3)] for k in range(dim)])
    return {k: np.array(a, np.float64) for k, a in out.items()}


@pytest.mark.parametrize("version", [2, 3, 4])
def test_spz_header_independent_decoder_and_precision(scene, tmp_path, version):
    p = tmp_path / f"s{version}.spz"
    S.write_gaussians(p, scene, format="spz", version=version)
    fields, body = _spz_payload(p)
    n = scene.xyz.shape[0]
    assert (fields["magic"], fields["version"], fields["n"], fields["degree"], fields["fbits"], fields["flags"]) == \
        (0x5053474E, version, n, 3, 12, 0)
    if version == 4:
        assert fields["nstreams"] == 6
    ref = _spz_decode(fields, body)
    g, info = SPZ.read_spz(p, return_info=True)
    assert (info.version, info.num_points, info.sh_degree, info.fractional_bits) == (version, n, 3, 12)
    # our reader = the independent decoder (float32 rounding; alpha clipped away from 0 and 1)
    np.testing.assert_allclose(g.xyz, ref["xyz"], atol=1e-6)
    np.testing.assert_allclose(g.scale, ref["scale"], atol=1e-6)
    np.testing.assert_allclose(g.f_dc, ref["f_dc"], atol=1e-5)
    np.testing.assert_allclose(g.f_rest, ref["sh"], atol=1e-6)
    np.testing.assert_allclose(_sigmoid(g.opacity), np.clip(ref["alpha"], 0.5 / 255, 254.5 / 255), atol=1e-6)
    assert _rot_err(g.rot, ref["xyzw"][:, [3, 0, 1, 2]]) < 1e-6
    # ... and both hold the original to the format's precision
    assert np.abs(ref["xyz"] - scene.xyz).max() <= 2.0 ** -13 + 1e-6
    inside = (scene.scale > -10) & (scene.scale < 5.9)
    assert np.abs(ref["scale"] - scene.scale)[inside].max() <= 1 / 32 + 1e-6
    assert np.abs(ref["f_dc"] - scene.f_dc).max() <= 0.5 / (0.15 * 255) + 1e-6
    assert np.abs(ref["alpha"] - _sigmoid(scene.opacity)).max() <= 0.5 / 255 + 1e-6
    assert np.abs(ref["sh"][:, :3] - scene.f_rest[:, :3]).max() <= 4.5 / 128 + 1e-6
    assert np.abs(ref["sh"][:, 3:] - scene.f_rest[:, 3:]).max() <= 8.5 / 128 + 1e-6
    q = scene.rot.astype(np.float64)[:, [1, 2, 3, 0]]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    if version == 2:  # x y z of the quaternion with w >= 0, to 0.5 / 127.5 (w follows, poorly when small)
        q = np.where(q[:, 3:] < 0, -q, q)
        assert np.abs(ref["xyzw"][:, :3] - q[:, :3]).max() <= 0.5 / 127.5 + 1e-6
    else:  # the three smaller components to half a 9-bit step of sqrt(1/2)
        q = np.where(np.take_along_axis(q, np.abs(q).argmax(1)[:, None], 1) < 0, -q, q)
        small = np.abs(q) < np.abs(q).max(1, keepdims=True)
        assert np.abs(ref["xyzw"] - q)[small].max() <= SQRT1_2 * 0.5 / 511 + 1e-6
        assert _rot_err(ref["xyzw"], q) < 2e-5
    # writing the decoded scene again reproduces the file's attributes byte for byte (rotations: v2 only; a
    # smallest-three magnitude on a rounding boundary may move by one step)
    q = tmp_path / f"again{version}.spz"
    S.write_gaussians(q, g, format="spz", version=version)
    again, rot0 = _spz_payload(q)[1], 16 * n
    rot1 = rot0 + (3 if version == 2 else 4) * n
    assert again[:rot0] == body[:rot0] and again[rot1:] == body[rot1:]
    assert version > 2 or again == body


def test_spz_flip_yz_is_the_rdf_rub_change_of_axes(scene, tmp_path):
    """flip_yz writes RUB: positions (x, -y, -z), covariances F S F, SH colours seen along F d equal the original's
    along d (F = diag(1, -1, -1), checked with the renderer's own SH evaluation). SH coefficients on multiples of 1/8
    (exact in 4- and 5-bit buckets of either sign) make the comparison exact."""
    grid = np.random.default_rng(3).integers(-7, 8, scene.f_rest.shape) / 8
    scene = scene._replace(f_rest=grid.astype(np.float32))
    plain, flipped = tmp_path / "plain.spz", tmp_path / "flip.spz"
    SPZ.write_spz(plain, scene)
    SPZ.write_spz(flipped, scene, flip_yz=True)
    a, b = SPZ.read_spz(plain), SPZ.read_spz(flipped)  # b: RUB as stored
    F = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(b.xyz, a.xyz @ F, atol=1e-6)
    np.testing.assert_allclose(np.asarray(G.covariances(b)), F @ np.asarray(G.covariances(a)) @ F, atol=2e-5)
    dirs = Rotation.random(16, random_state=2).apply([0.0, 0.0, 1.0])[:, None, :]  # (16, 1, 3): every Gaussian
    ca, cb = np.asarray(G.sh_color(a, dirs)), np.asarray(G.sh_color(b, dirs @ F))
    np.testing.assert_allclose(cb, ca, atol=1e-5)
    np.testing.assert_allclose(a.f_rest, grid, atol=1e-6)
    c = SPZ.read_spz(flipped, flip_yz=True)  # and back to RDF
    np.testing.assert_allclose(c.xyz, a.xyz, atol=1e-6)
    np.testing.assert_allclose(np.asarray(G.sh_color(c, dirs)), ca, atol=1e-5)


def test_spz_fixed_point_range(scene, tmp_path):
    big = scene._replace(xyz=scene.xyz * 1500.0)  # reaches ~3700: 12 fraction bits overflow 24 bits
    p = tmp_path / "big.spz"
    SPZ.write_spz(p, big)
    fields, body = _spz_payload(p)
    assert fields["fbits"] == 11
    assert np.abs(SPZ.read_spz(p).xyz - big.xyz).max() <= 2.0 ** -12 + 1e-3 * 2.0 ** -12
    with pytest.raises(ValueError, match="fractional_bits=12"):
        SPZ.write_spz(tmp_path / "x.spz", big, fractional_bits=12)
    assert not (tmp_path / "x.spz").exists()
    with pytest.raises(ValueError, match="non-finite"):
        SPZ.write_spz(tmp_path / "x.spz", scene._replace(xyz=np.full_like(scene.xyz, np.nan)))


# -------------------------------------------------------------------------------------------- compressed PLY


def _cply_decode(path):
    """Independent decoder of a compressed PLY: header by hand, then one Gaussian at a time."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    elements = []
    for line in raw[:end].decode("ascii").splitlines():
        t = line.split()
        if t[0] == "element":
            elements.append([t[1], int(t[2]), []])
        elif t[0] == "property":
            elements[-1][2].append((t[1], t[2]))
    off, data = end, {}
    for name, count, props in elements:
        fmt = "<" + "".join({"float": "f", "uint": "I", "uchar": "B"}[t] for t, _ in props)
        size = struct.calcsize(fmt)
        data[name] = [dict(zip([p for _, p in props], struct.unpack_from(fmt, raw, off + i * size)))
                      for i in range(count)]
        off += count * size
    assert off == len(raw)
    out = {k: [] for k in ("xyz", "scale", "rgb", "alpha", "rot", "sh", "step")}
    for i, v in enumerate(data["vertex"]):
        c = data["chunk"][i // 256]

        def field(word, shift, bits):
            return ((word >> shift) & ((1 << bits) - 1)) / ((1 << bits) - 1)

        def lerp(word, lo, hi):
            return [c[lo + a] + (c[hi + a] - c[lo + a]) * field(word, s, b)
                    for a, s, b in (("x", 21, 11), ("y", 11, 10), ("z", 0, 11))]

        out["xyz"].append(lerp(v["packed_position"], "min_", "max_"))
        out["scale"].append(lerp(v["packed_scale"], "min_scale_", "max_scale_"))
        bits = (("x", 11), ("y", 10), ("z", 11))
        out["step"].append([(c["max_" + a] - c["min_" + a]) / (2 ** b - 1) for a, b in bits]
                           + [(c["max_scale_" + a] - c["min_scale_" + a]) / (2 ** b - 1) for a, b in bits]
                           + [(c["max_" + a] - c["min_" + a]) / 255 for a in "rgb"])
        col = v["packed_color"]
        out["rgb"].append([c["min_" + a] + (c["max_" + a] - c["min_" + a]) * field(col, s, 8)
                           for a, s in (("r", 24), ("g", 16), ("b", 8))])
        out["alpha"].append(field(col, 0, 8))
        word = v["packed_rotation"]
        big = word >> 30
        q = [0.0] * 4
        for j, k in enumerate(k for k in range(4) if k != big):
            q[k] = (field(word, 10 * (2 - j), 10) - 0.5) * math.sqrt(2)
        q[big] = math.sqrt(max(0.0, 1 - sum(x * x for x in q)))
        out["rot"].append(q)
        if "sh" in data:
            row = data["sh"][i]
            out["sh"].append([-4.0 if b == 0 else 4.0 if b == 255 else ((b + 0.5) / 256 - 0.5) * 8
                              for b in (row[f"f_rest_{k}"] for k in range(len(row)))])
    return elements, {k: np.array(a, np.float64) for k, a in out.items()}


def test_compressed_ply_header_independent_decoder_and_precision(scene, tmp_path):
    p = tmp_path / "s.compressed.ply"
    S.write_gaussians(p, scene)  # the suffix picks the format
    elements, ref = _cply_decode(p)
    n = scene.xyz.shape[0]
    assert [(e[0], e[1], len(e[2])) for e in elements] == [("chunk", math.ceil(n / 256), 18), ("vertex", n, 4),
                                                            ("sh", n, 45)]
    assert [pn for _, pn in elements[1][2]] == list(CP.VERTEX_PROPS)
    g = S.read_ply(p)  # read_ply recognises the layout
    np.testing.assert_allclose(g.xyz, ref["xyz"], atol=1e-5)
    np.testing.assert_allclose(g.scale, ref["scale"], atol=1e-5)
    np.testing.assert_allclose(G.dc_to_rgb(g.f_dc), ref["rgb"], atol=1e-5)
    np.testing.assert_allclose(_sigmoid(g.opacity), np.clip(ref["alpha"], 0.5 / 255, 254.5 / 255), atol=1e-6)
    np.testing.assert_allclose(g.f_rest.transpose(0, 2, 1).reshape(n, -1), ref["sh"], atol=1e-6)
    assert _rot_err(g.rot, ref["rot"]) < 1e-6
    # the file holds the Gaussians in Morton order; each to half a quantisation step of its chunk
    orig = scene.take(CP.morton_order(scene.xyz))
    half = ref["step"] / 2 + 1e-6
    assert (np.abs(ref["xyz"] - orig.xyz) <= half[:, :3]).all()
    assert (np.abs(ref["scale"] - orig.scale) <= half[:, 3:6]).all()
    assert (np.abs(ref["rgb"] - G.dc_to_rgb(orig.f_dc.astype(np.float64))) <= half[:, 6:] + 1e-6).all()
    assert np.abs(ref["alpha"] - _sigmoid(orig.opacity)).max() <= 0.5 / 255 + 1e-6
    assert np.abs(ref["sh"] - orig.f_rest.transpose(0, 2, 1).reshape(n, -1)).max() <= 1 / 32 + 1e-6
    assert _rot_err(ref["rot"], orig.rot) < 2e-6 * 1023 / 2  # components within sqrt(2) / 2046
    # a degree-0 scene has no sh element and reads back without f_rest
    q = tmp_path / "dc.ply"
    CP.write_compressed_ply(q, scene._replace(f_rest=None))
    assert [e[0] for e in _cply_decode(q)[0]] == ["chunk", "vertex"]
    assert S.read_gaussians(q).f_rest is None


# ------------------------------------------------------------------------------------------------------- SOG


def _sog_files(scene, n_palette=4):
    """An independent SOG v2 encoder (spec of the reference writer): {name: bytes} and the values it encodes."""
    n = scene.xyz.shape[0]
    w = int(math.ceil(math.sqrt(n) / 4) * 4)
    h = int(math.ceil(n / w / 4) * 4)
    rng = np.random.default_rng(5)

    def webp(pixels, width=w, height=h):
        img = np.zeros((width * height, 4), np.uint8)
        img[:len(pixels)] = pixels
        buf = io.BytesIO()
        Image.fromarray(img.reshape(height, width, 4), "RGBA").save(buf, "WEBP", lossless=True)
        return buf.getvalue()

    lt = np.sign(scene.xyz) * np.log1p(np.abs(scene.xyz.astype(np.float64)))
    mins, maxs = lt.min(0), lt.max(0)
    u = np.rint(65535 * (lt - mins) / (maxs - mins)).astype(np.int64)
    ones = np.full((n, 1), 255, np.uint8)
    files = {"means_l.webp": webp(np.concatenate([(u & 255).astype(np.uint8), ones], 1)),
             "means_u.webp": webp(np.concatenate([(u >> 8).astype(np.uint8), ones], 1))}
    q = scene.rot / np.linalg.norm(scene.rot, axis=1, keepdims=True)
    big = np.abs(q).argmax(1)
    q = q * np.where(q[np.arange(n), big] < 0, -1, 1)[:, None]
    rest = np.array([[k for k in range(4) if k != b] for b in big])
    comp = np.floor(255 * (q[np.arange(n)[:, None], rest] / math.sqrt(2) + 0.5)).astype(np.uint8)
    files["quats.webp"] = webp(np.concatenate([comp, (252 + big)[:, None].astype(np.uint8)], 1))
    scale_cb = np.sort(rng.uniform(-8, 1, 256))
    dc_cb = np.sort(rng.uniform(-2, 2, 256))
    s_idx, c_idx = rng.integers(0, 256, (n, 3)), rng.integers(0, 256, (n, 3))
    a = rng.integers(0, 256, n)
    files["scales.webp"] = webp(np.concatenate([s_idx.astype(np.uint8), ones], 1))
    files["sh0.webp"] = webp(np.concatenate([c_idx, a[:, None]], 1).astype(np.uint8))
    sh_cb = np.sort(rng.uniform(-1, 1, 256))
    cen = rng.integers(0, 256, (n_palette, 3, 3))  # palette entry, coefficient, channel
    labels = rng.integers(0, n_palette, n)
    cen_px = np.zeros((64 * 3 * math.ceil(n_palette / 64), 4), np.uint8)
    for p_ in range(n_palette):
        for k in range(3):
            cen_px[p_ * 3 + k] = (*cen[p_, k], 255)
    files["shN_centroids.webp"] = webp(cen_px, 64 * 3, math.ceil(n_palette / 64))
    files["shN_labels.webp"] = webp(np.stack([labels & 255, labels >> 8, 0 * labels, 255 + 0 * labels], 1)
                                    .astype(np.uint8))
    meta = {"version": 2, "count": n, "means": {"mins": mins.tolist(), "maxs": maxs.tolist(),
                                                  "files": ["means_l.webp", "means_u.webp"]},
            "scales": {"codebook": scale_cb.tolist(), "files": ["scales.webp"]}, "quats": {"files": ["quats.webp"]},
            "sh0": {"codebook": dc_cb.tolist(), "files": ["sh0.webp"]},
            "shN": {"count": n_palette, "bands": 1, "codebook": sh_cb.tolist(),
                    "files": ["shN_centroids.webp", "shN_labels.webp"]}}
    files["meta.json"] = json.dumps(meta).encode()
    expect = {"xyz": np.sign(scene.xyz) * np.expm1(np.abs(mins + (maxs - mins) * u / 65535)),
              "scale": scale_cb[s_idx], "f_dc": dc_cb[c_idx], "alpha": a / 255, "rot": q, "rot_step": 2 / 255,
              "f_rest": sh_cb[cen[labels]]}
    return files, expect


def _write_sog(folder, files, bundle=None):
    folder.mkdir(parents=True, exist_ok=True)
    if bundle:
        with zipfile.ZipFile(folder / bundle, "w") as z:
            for k, v in files.items():
                z.writestr(k, v)
        return folder / bundle
    for k, v in files.items():
        (folder / k).write_bytes(v)
    return folder / "meta.json"


def test_sog_bundle_and_folder_read_what_was_encoded(scene, tmp_path):
    small = scene.take(np.arange(300))
    files, ex = _sog_files(small)
    for path in (_write_sog(tmp_path / "b", files, "s.sog"), _write_sog(tmp_path / "f", files)):
        assert S.is_gaussian_file(path)
        g = S.read_gaussians(path)
        np.testing.assert_allclose(g.xyz, ex["xyz"], rtol=1e-5, atol=1e-6)
        assert np.abs(g.xyz - small.xyz).max() < 1e-3  # 16-bit log-space positions of a scene within ~2.5
        np.testing.assert_allclose(g.scale, ex["scale"], atol=1e-6)
        np.testing.assert_allclose(g.f_dc, ex["f_dc"], atol=1e-6)
        np.testing.assert_allclose(_sigmoid(g.opacity), np.clip(ex["alpha"], 0.5 / 255, 254.5 / 255), atol=1e-6)
        np.testing.assert_allclose(g.f_rest, ex["f_rest"], atol=1e-6)
        assert _rot_err(g.rot, ex["rot"]) < 1e-4  # 8-bit components, rounded down
    assert not S.is_gaussian_file(tmp_path / "f" / "quats.webp")


# ----------------------------------------------------------------------------------------- malformed files


def _valid(g):
    for f in ("xyz", "f_dc", "opacity", "scale", "rot"):
        assert np.isfinite(getattr(g, f)).all(), f
    np.testing.assert_allclose(np.linalg.norm(g.rot, axis=1), 1, atol=1e-5)


def _contract(reader, path, data, reject: bool, what: str):
    path.write_bytes(data)
    try:
        g = reader(path)
    except ValueError as e:
        assert str(path) in str(e), f"{what}: ValueError does not name the file: {e}"
        return
    assert not reject, f"{what}: accepted, expected a ValueError"
    _valid(g)


def _cases(data, rng, n_trunc, n_flip, lo=0):
    cuts = sorted({0, 1, 10, len(data) // 2, len(data) - 1} | {rng.randrange(len(data)) for _ in range(n_trunc)})
    out = [(f"truncate@{k}", data[:k], True) for k in cuts]
    for _ in range(n_flip):
        k = rng.randrange(lo, len(data))
        b = bytearray(data)
        b[k] ^= rng.randrange(1, 256)
        out.append((f"flip@{k}", bytes(b), False))
    return out


def test_spz_malformed(scene, tmp_path):
    small = scene.take(np.arange(64))
    rng = random.Random(18)
    for version in (2, 3, 4):
        p = tmp_path / f"orig{version}.spz"
        SPZ.write_spz(p, small, version=version)
        data = p.read_bytes()
        for what, d, reject in _cases(data, rng, 12, 25):
            _contract(SPZ.read_spz, tmp_path / "m.spz", d, reject, f"v{version} {what}")
    fields, body = _spz_payload(tmp_path / "orig3.spz")
    def header(**kw):
        f = {**dict(magic=0x5053474E, version=3, n=64, deg=3, fb=12, flags=0, res=0), **kw}
        return struct.pack("<IIIBBBB", *f.values())

    cases = {"magic": header(magic=0x12345678), "version=9": header(version=9), "degree=7": header(deg=7),
             "fbits=40": header(fb=40), "count-huge": header(n=2 ** 31 - 2), "count+1": header(n=65),
             "v4-in-gzip": header(version=4)}
    for what, h in cases.items():
        _contract(SPZ.read_spz, tmp_path / "m.spz", gzip.compress(h + body), True, what)
    # count-1 reads 63 Gaussians and skips the rest as extension bytes (with a warning)
    _contract(SPZ.read_spz, tmp_path / "m.spz", gzip.compress(header(n=63) + body), False, "count-1")
    # a gzip bomb: valid header and attributes followed by 8 MiB of zeros: bounded, rejected
    _contract(SPZ.read_spz, tmp_path / "m.spz", gzip.compress(header() + body + bytes(8 << 20)), True, "bomb")
    # NGSP v4 header edits
    v4 = (tmp_path / "orig4.spz").read_bytes()
    for what, d in {"numStreams": v4[:15] + b"\x09" + v4[16:], "toc-offset": v4[:16] + struct.pack("<I", 10 ** 6)
                    + v4[20:], "count-huge": v4[:8] + struct.pack("<I", 2 ** 31 - 1) + v4[12:],
                    "stream-size": v4[:40] + struct.pack("<Q", 10 ** 9) + v4[48:], "trailing": v4 + b"x",
                    "other-file": b"PK\x03\x04" + bytes(60), "empty": b""}.items():
        _contract(SPZ.read_spz, tmp_path / "m.spz", d, True, f"v4 {what}")


def test_compressed_ply_malformed(scene, tmp_path):
    p = tmp_path / "orig.ply"
    CP.write_compressed_ply(p, scene.take(np.arange(300)))
    data = p.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode()
    rng = random.Random(19)
    cases = _cases(data, rng, 15, 20, lo=end)
    cases = [(w, d, r and len(d) > 0 and w != f"truncate@{len(data)}") for w, d, r in cases]
    for what, new in (("chunks+1", header.replace("element chunk 2", "element chunk 3")),
                      ("chunks-1", header.replace("element chunk 2", "element chunk 1")),
                      ("vertices-huge", header.replace("element vertex 300", "element vertex 99999999999")),
                      ("sh-rows", header.replace("element sh 300", "element sh 299")),
                      ("uint->float", header.replace("property uint packed_color", "property float packed_color")),
                      ("sh-count", header.replace("property uchar f_rest_44\n", "")),
                      ("no-chunk-prop", header.replace("property float max_b\n", "")),
                      ("extra-element", header.replace("element vertex", "element extra 1\nproperty float a\n"
                                                       "element vertex"))):
        cases.append((what, new.encode() + data[end:], True))
    nan = data[:end] + struct.pack("<f", np.nan) + data[end + 4:]
    cases.append(("chunk-min-nan", nan, True))
    for what, d, reject in cases:
        _contract(S.read_ply, tmp_path / "m.ply", d, reject, what)


def test_sog_malformed(scene, tmp_path):
    files, _ = _sog_files(scene.take(np.arange(100)))
    meta = json.loads(files["meta.json"])

    def variant(name, **edits):
        m = json.loads(json.dumps(meta))
        for k, v in edits.items():
            keys = k.split("__")
            d = m
            for key in keys[:-1]:
                d = d[key]
            if v is None:
                del d[keys[-1]]
            else:
                d[keys[-1]] = v
        return _write_sog(tmp_path / name, {**files, "meta.json": json.dumps(m).encode()})

    outside = tmp_path / "outside.webp"
    outside.write_bytes(files["quats.webp"])
    bad = {"escape": variant("escape", quats__files=["../outside.webp"]),
           "absolute": variant("absolute", quats__files=[str(outside)]),
           "count-huge": variant("huge", count=10 ** 9), "count-str": variant("cstr", count="100"),
           "v1": variant("v1", version=None), "v3": variant("v3", version=3),
           "codebook-short": variant("cb", scales__codebook=[0.0] * 10),
           "mins-nan": variant("nan", means__mins=["x", 0, 0]), "no-sh0": variant("nosh0", sh0=None),
           "bands-4": variant("bands", shN__bands=4), "missing-file": variant("missing", sh0__files=["nope.webp"])}
    link_dir = tmp_path / "link"
    _write_sog(link_dir, files)
    (link_dir / "quats.webp").unlink()
    os.symlink(outside, link_dir / "quats.webp")
    bad["symlink-out"] = link_dir / "meta.json"
    png = _write_sog(tmp_path / "png", files)
    Image.fromarray(np.zeros((12, 12, 4), np.uint8)).save(tmp_path / "png" / "quats.webp", "PNG")
    bad["png-texture"] = png
    small = _write_sog(tmp_path / "small", files)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA").save(buf, "WEBP", lossless=True)
    (tmp_path / "small" / "scales.webp").write_bytes(buf.getvalue())
    bad["texture-too-small"] = small
    tag = _write_sog(tmp_path / "tag", files)
    img = np.array(Image.open(io.BytesIO(files["quats.webp"])).convert("RGBA"))
    img[0, 0, 3] = 7
    Image.fromarray(img, "RGBA").save(tmp_path / "tag" / "quats.webp", "WEBP", lossless=True)
    bad["quat-tag"] = tag
    for what, path in bad.items():
        with pytest.raises(ValueError) as e:
            SOG.read_sog(path)
        assert str(path) in str(e.value), (what, str(e.value))
    # a bundle: a member declaring a huge size, a member missing, not a zip at all
    bundle = _write_sog(tmp_path / "zip", files, "s.sog")
    zdata = bytearray(bundle.read_bytes())
    for k in range(len(zdata) - 4):  # the central directory's declared uncompressed size of meta.json
        if zdata[k:k + 4] == b"PK\x01\x02" and zdata[k + 46:k + 55] == b"meta.json":
            zdata[k + 24:k + 28] = struct.pack("<I", 2 ** 31)
    for what, d in {"declared-huge": bytes(zdata), "not-zip": b"GIF89a" + bytes(100), "empty": b"",
                    "truncated": bundle.read_bytes()[:len(zdata) // 2]}.items():
        _contract(SOG.read_sog, tmp_path / "m.sog", d, True, what)
    miss = _write_sog(tmp_path / "zip2", {k: v for k, v in files.items() if k != "sh0.webp"}, "s.sog")
    with pytest.raises(ValueError, match="no member 'sh0.webp'"):
        SOG.read_sog(miss)


# ------------------------------------------------------------------------------------------- CLI plumbing


def test_write_gaussians_dispatch_and_cli_inputs(scene, tmp_path, capsys):
    from scene3d import reconstruct, sample

    small = scene.take(np.arange(200))._replace(f_rest=None)
    rows = np.stack([G.pack(small), G.pack(small.take(np.arange(199, -1, -1)))]).astype(np.float32)
    for fmt in S.FORMATS:
        out = tmp_path / fmt
        files = sample.write_samples(str(out), rows, size=16, views=1, renderer="points", fmt=fmt)
        suffix = S.output_suffix(fmt)
        assert files["ply"] == [str(out / f"sample_{i}{suffix}") for i in range(2)]
        back = S.read_gaussians(files["ply"][0])
        tol = {"ply": 0, "splat": 0.01, "spz": 2.0 ** -13, "compressed_ply": 0.01}[fmt]
        order = CP.morton_order(small.xyz) if fmt == "compressed_ply" else (
            np.argsort(-(np.exp(small.scale.astype(np.float64).sum(-1)) * _sigmoid(small.opacity)), kind="stable")
            if fmt == "splat" else np.arange(200))
        assert np.abs(back.xyz - small.xyz[order]).max() <= tol + 1e-6, fmt
        assert reconstruct.input_kind(files["ply"][0]) == "gaussians"
        assert INS.detect(files["ply"][0]) == ("gaussians", out / f"sample_0{suffix}")
    sog_meta = _write_sog(tmp_path / "sogdir", _sog_files(small)[0])
    assert reconstruct.input_kind(sog_meta) == "gaussians"
    assert INS.detect(tmp_path / "sogdir") == ("gaussians", sog_meta)
    assert reconstruct.parse_args(["--workdir=w", "--input=i", "--out=o", "--format=spz"]).format == "spz"
    assert INS.main([str(tmp_path / "spz" / "sample_0.spz"), "--no-png"]) == 0
    assert "Niantic SPZ version 3" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot write format"):
        S.write_gaussians(tmp_path / "x.sog", small)
    empty = small.take(np.arange(0))
    for fmt in S.FORMATS:  # an empty scene is a valid file of every format
        path = tmp_path / f"empty{S.output_suffix(fmt)}"
        S.write_gaussians(path, empty)
        assert S.read_gaussians(path).xyz.shape == (0, 3)
