"""3D Gaussian Splatting parameters: container, raw-channel packing, activations, SO(3) action, normalisation.

Raw (pre-activation) values, as stored in the INRIA PLY layout, are what models see:

  xyz      (N, 3)     positions
  f_dc     (N, 3)     SH degree-0 coefficient per colour (RGB = 0.5 + C0 * f_dc)
  opacity  (N,)       opacity logit (alpha = sigmoid(opacity))
  scale    (N, 3)     log scales (sigma = exp(scale))
  rot      (N, 4)     quaternion w x y z, not necessarily unit (normalised on activation)
  f_rest   (N, K, 3)  SH coefficients 1..K per colour, K = (degree + 1)^2 - 1 in {3, 8, 15}; None for degree 0
  normals  (N, 3)     optional, unused by models (INRIA writes zeros)

Every function takes numpy or jax arrays (the namespace follows the inputs) and, unless said otherwise,
broadcasts over leading batch dimensions in front of the Gaussian axis. `Gaussians` is a NamedTuple, hence a
jax pytree (None fields are empty subtrees).

Raw-channel order (`pack` / `unpack`), Can3Tok's for degree 0 (its 18-channel rows hold these 14 channels at
4..17 after voxel centre + id):

  0-2 xyz | 3-5 f_dc | 6 opacity | 7-9 scale | 10-13 rot (w x y z) | 14.. f_rest

f_rest is appended last, so the first 14 channels are always the degree-0 description, and it is flattened
channel-major exactly as the INRIA PLY stores f_rest_0..f_rest_{3K-1}: K coefficients of R, then G, then B.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from scene3d.geometry.so3 import array_namespace, matrix_to_quat, quat_multiply, quat_to_matrix

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3
BASE_CHANNELS = 14


def num_rest_coeffs(sh_degree: int) -> int:
    """K = (degree + 1)^2 - 1 higher-order SH coefficients per colour channel."""
    if sh_degree not in (0, 1, 2, 3):
        raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
    return (sh_degree + 1) ** 2 - 1


def num_channels(sh_degree: int = 0) -> int:
    """Raw channels per Gaussian: 14 + 3K (14, 23, 38, 59 for degrees 0..3)."""
    return BASE_CHANNELS + 3 * num_rest_coeffs(sh_degree)


def degree_from_num_rest(k: int) -> int:
    """Inverse of `num_rest_coeffs`; ValueError for a K that is no SH degree 0..3."""
    for d in range(MAX_SH_DEGREE + 1):
        if num_rest_coeffs(d) == k:
            return d
    raise ValueError(f"{k} higher-order SH coefficients per colour is no SH degree 0..3 (expected 0, 3, 8 or 15)")


def channel_slices(sh_degree: int = 0) -> dict:
    """Name -> slice of the raw channel axis (see module docstring)."""
    k = num_rest_coeffs(sh_degree)
    return {"xyz": slice(0, 3), "f_dc": slice(3, 6), "opacity": slice(6, 7), "scale": slice(7, 10),
            "rot": slice(10, 14), "f_rest": slice(14, 14 + 3 * k)}


class Gaussians(NamedTuple):
    """Raw 3DGS parameters (see module docstring for shapes and meaning)."""
    xyz: object
    f_dc: object
    opacity: object
    scale: object
    rot: object
    f_rest: Optional[object] = None
    normals: Optional[object] = None

    @property
    def sh_degree(self) -> int:
        if self.f_rest is None:
            return 0
        return degree_from_num_rest(self.f_rest.shape[-2])

    @property
    def num_gaussians(self) -> int:
        return self.xyz.shape[-2]

    def take(self, idx):
        """Subset / reorder along the Gaussian axis (unbatched: the first axis)."""
        return Gaussians(*(None if a is None else a[idx] for a in self))

    def validate(self, name: str = "gaussians") -> "Gaussians":
        """Check shapes agree; ValueError naming `name`, the field and the expected shape. Returns self."""
        lead = tuple(self.xyz.shape[:-1])
        if self.xyz.ndim < 2 or self.xyz.shape[-1] != 3:
            raise ValueError(f"{name}.xyz: expected shape (..., N, 3), got {tuple(self.xyz.shape)}")
        expect = {"f_dc": lead + (3,), "opacity": lead, "scale": lead + (3,), "rot": lead + (4,),
                  "normals": lead + (3,)}
        for field, shape in expect.items():
            a = getattr(self, field)
            if a is not None and tuple(a.shape) != shape:
                raise ValueError(f"{name}.{field}: expected shape {shape}, got {tuple(a.shape)}")
        if self.f_rest is not None:
            fr = tuple(self.f_rest.shape)
            if len(fr) != len(lead) + 2 or fr[:len(lead)] != lead or fr[-1] != 3:
                raise ValueError(f"{name}.f_rest: expected shape {lead + ('K', 3)} with K in (3, 8, 15), got {fr}")
            try:
                degree_from_num_rest(fr[-2])
            except ValueError as e:
                raise ValueError(f"{name}.f_rest: {e}") from None
        return self


# ----------------------------------------------------------------------------------------------- packing


def pack(g: Gaussians):
    """Gaussians -> (..., N, 14 + 3K) raw channels (order in the module docstring). Normals are dropped."""
    g.validate()
    xp = array_namespace(*(a for a in g if a is not None))
    parts = [g.xyz, g.f_dc, g.opacity[..., None], g.scale, g.rot]
    if g.f_rest is not None and g.f_rest.shape[-2] > 0:
        fr = xp.swapaxes(g.f_rest, -1, -2)  # (..., N, 3, K): channel-major as in the INRIA PLY
        parts.append(fr.reshape(fr.shape[:-2] + (-1,)))
    dtype = xp.result_type(*parts)
    return xp.concatenate([xp.asarray(p, dtype=dtype) for p in parts], axis=-1)


def unpack(raw, sh_degree: Optional[int] = None) -> Gaussians:
    """(..., N, C) raw channels -> Gaussians. sh_degree is inferred from C (14, 23, 38, 59) when None."""
    c = raw.shape[-1]
    if sh_degree is None:
        rest, rem = divmod(c - BASE_CHANNELS, 3)
        if c < BASE_CHANNELS or rem:
            raise ValueError(f"raw Gaussians: expected 14, 23, 38 or 59 channels, got shape {tuple(raw.shape)}")
        try:
            sh_degree = degree_from_num_rest(rest)
        except ValueError:
            raise ValueError(f"raw Gaussians: expected 14, 23, 38 or 59 channels, got shape {tuple(raw.shape)}") \
                from None
    if c != num_channels(sh_degree):
        raise ValueError(f"raw Gaussians: sh_degree {sh_degree} needs {num_channels(sh_degree)} channels, "
                         f"got shape {tuple(raw.shape)}")
    s = channel_slices(sh_degree)
    f_rest = None
    if sh_degree > 0:
        k = num_rest_coeffs(sh_degree)
        xp = array_namespace(raw)
        f_rest = xp.swapaxes(raw[..., s["f_rest"]].reshape(raw.shape[:-1] + (3, k)), -1, -2)
    return Gaussians(xyz=raw[..., s["xyz"]], f_dc=raw[..., s["f_dc"]], opacity=raw[..., 6],
                     scale=raw[..., s["scale"]], rot=raw[..., s["rot"]], f_rest=f_rest)


# ------------------------------------------------------------------------------------------- activations


def sigmoid(x):
    xp = array_namespace(x)
    if xp is np:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-x))
    import jax
    return jax.nn.sigmoid(x)


def logit(p):
    """Inverse sigmoid (p in (0, 1))."""
    xp = array_namespace(p)
    return xp.log(p) - xp.log1p(-p)


def activate_opacity(opacity):
    """Opacity logit -> alpha in [0, 1] (+inf -> 1)."""
    return sigmoid(opacity)


def activate_scale(scale):
    """Log scale -> standard deviations exp(scale)."""
    return array_namespace(scale).exp(scale)


def normalise_quat(rot, eps: float = 1e-12):
    """Quaternions w x y z -> unit quaternions."""
    xp = array_namespace(rot)
    return rot / xp.maximum(xp.linalg.norm(rot, axis=-1, keepdims=True), eps)


def dc_to_rgb(f_dc):
    """SH DC coefficient -> RGB (0.5 + C0 f_dc; not clipped)."""
    return 0.5 + SH_C0 * f_dc


def rgb_to_dc(rgb):
    """RGB -> SH DC coefficient (inverse of `dc_to_rgb`)."""
    return (rgb - 0.5) / SH_C0


def covariance(scale, rot):
    """Raw log scales (..., 3) and quaternions (..., 4) -> covariances R diag(exp(2 scale)) R^T (..., 3, 3)."""
    xp = array_namespace(scale, rot)
    r = quat_to_matrix(rot)
    s2 = xp.exp(2 * scale)
    return (r * s2[..., None, :]) @ xp.swapaxes(r, -1, -2)


def covariances(g: Gaussians):
    """(..., N, 3, 3) covariance matrices of `g`."""
    return covariance(g.scale, g.rot)


# ------------------------------------------------------------------------------------ spherical harmonics


def sh_basis(sh_degree: int, dirs):
    """Real SH basis of the 3DGS reference rasteriser at unit directions: (..., 3) -> (..., (degree+1)^2)."""
    num_rest_coeffs(sh_degree)
    xp = array_namespace(dirs)
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [xp.full_like(x, SH_C0)]
    if sh_degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if sh_degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if sh_degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return xp.stack(out, axis=-1)


def sh_color(g: Gaussians, dirs):
    """View-dependent colour 0.5 + sum_lm c_lm Y_lm(d) of each Gaussian, unclipped (the rasteriser clamps >= 0).

    dirs: (..., N, 3) viewing directions (Gaussian centre minus camera centre), normalised here.
    """
    xp = array_namespace(g.f_dc, dirs)
    d = dirs / xp.linalg.norm(dirs, axis=-1, keepdims=True)
    coeffs = g.f_dc[..., None, :]
    if g.f_rest is not None and g.f_rest.shape[-2] > 0:
        coeffs = xp.concatenate([coeffs, g.f_rest], axis=-2)
    basis = sh_basis(g.sh_degree, d)
    return 0.5 + xp.sum(basis[..., None] * coeffs, axis=-2)


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = i * math.pi * (3 - math.sqrt(5))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)


_SH_DIRS = _fibonacci_sphere(64)
_SH_BANDS = {1: slice(0, 3), 2: slice(3, 8), 3: slice(8, 15)}  # f_rest rows of each band


def _band_basis(l, dirs):
    return sh_basis(l, dirs)[..., l * l:(l + 1) ** 2]


_SH_PINV = {l: np.linalg.pinv(_band_basis(l, _SH_DIRS)) for l in _SH_BANDS}


def sh_rotation_matrix(l: int, R):
    """(2l+1, 2l+1) matrix M with c' = M c rotating band-l SH coefficients of a function f into f(R^T .).

    Exact up to round-off for the 3DGS basis: fitted by least squares on 64 fixed directions, using that
    Y_l(R^T d) = W Y_l(d) for a linear W (each band is rotation-invariant), so M = W^T = pinv(Y(D)) Y(D R).
    For l = 1 this equals P R P^T with Y_1 = C1 P d, P = [[0,-1,0],[0,0,1],[-1,0,0]].
    """
    xp = array_namespace(R)
    dirs = xp.asarray(_SH_DIRS, dtype=R.dtype) @ R  # rows: (R^T d_i)^T
    return xp.asarray(_SH_PINV[l], dtype=R.dtype) @ _band_basis(l, dirs)


def _check_rotation(R):
    if tuple(np.shape(R)) != (3, 3):
        raise ValueError(f"rotation R: expected shape (3, 3), got {tuple(np.shape(R))}")
    if isinstance(R, np.ndarray):
        if not (np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0):
            raise ValueError("rotation R: not a proper rotation matrix (R R^T != I or det(R) < 0)")


def rotate_gaussians(g: Gaussians, R, t=None) -> Gaussians:
    """Apply x -> R x + t to a scene: positions, normals, quaternions (q' = q_R * q) and SH of every degree.

    Covariances become R Sigma R^T and the view-dependent colour satisfies c'(R d) = c(d). Log scales, opacity
    and f_dc are invariant. R: (3, 3) proper rotation; t: (3,) or None. Unbatched or batched Gaussians.
    """
    g.validate()
    xp = array_namespace(*(a for a in g if a is not None), R)
    _check_rotation(R)
    R = xp.asarray(R, dtype=g.xyz.dtype)
    xyz = g.xyz @ R.T
    if t is not None:
        t = xp.asarray(t, dtype=g.xyz.dtype)
        if tuple(t.shape) != (3,):
            raise ValueError(f"translation t: expected shape (3,), got {tuple(t.shape)}")
        xyz = xyz + t
    q_r = xp.asarray(matrix_to_quat(R), dtype=g.rot.dtype)
    rot = quat_multiply(q_r, g.rot)
    normals = None if g.normals is None else g.normals @ xp.asarray(R.T, dtype=g.normals.dtype)
    f_rest = g.f_rest
    if f_rest is not None and f_rest.shape[-2] > 0:
        bands = []
        for l in range(1, g.sh_degree + 1):
            m = xp.asarray(sh_rotation_matrix(l, R), dtype=f_rest.dtype)
            bands.append(xp.einsum("ij,...jc->...ic", m, f_rest[..., _SH_BANDS[l], :]))
        f_rest = xp.concatenate(bands, axis=-2)
    return g._replace(xyz=xyz, rot=rot, normals=normals, f_rest=f_rest)


# ---------------------------------------------------------------------------------------- normalisation


class SceneTransform(NamedTuple):
    """Similarity x_norm = (x - center) * scale applied by `normalise_scene` (numpy, computed in float64)."""
    center: np.ndarray  # (3,) float64
    scale: float

    def apply_points(self, x):
        x = np.asarray(x)
        return ((x.astype(np.float64) - self.center) * self.scale).astype(x.dtype)

    def invert_points(self, x):
        x = np.asarray(x)
        return (x.astype(np.float64) / self.scale + self.center).astype(x.dtype)

    def apply_c2w(self, c2w):
        """(..., 4, 4) camera-to-world: camera centres transformed, orientations unchanged."""
        return _set_translation(c2w, self.apply_points(c2w[..., :3, 3]))

    def invert_c2w(self, c2w):
        return _set_translation(c2w, self.invert_points(c2w[..., :3, 3]))


def _set_translation(c2w, t):
    c2w = np.array(c2w, copy=True)
    c2w[..., :3, 3] = t
    return c2w


def _check_c2w(c2w):
    c2w = np.asarray(c2w)
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"cameras_c2w: expected shape (..., 4, 4), got {tuple(c2w.shape)}")
    return c2w


def normalise_scene(g: Gaussians, radius: float = 1.0, cameras_c2w=None):
    """Can3Tok canonical normalisation of one (unbatched, numpy) scene.

    Centres at the mean position and scales so the farthest Gaussian lies at radius / 1.1; log scales are shifted
    by log(scale factor); rotations, opacity and colour are unchanged. A scene whose Gaussians all coincide
    gets scale factor 1. Returns (g', transform), or (g', transform, c2w') when cameras_c2w (..., 4, 4) is given
    (camera centres transformed the same way). `denormalise_scene` undoes it.
    """
    g.validate()
    xyz = np.asarray(g.xyz)
    if xyz.ndim != 2 or xyz.shape[0] == 0:
        raise ValueError(f"normalise_scene: expected an unbatched, non-empty scene (N, 3), got {xyz.shape}")
    if not radius > 0:
        raise ValueError(f"normalise_scene: radius must be > 0, got {radius}")
    x64 = xyz.astype(np.float64)
    center = x64.mean(0)
    far = float(np.sqrt(((x64 - center) ** 2).sum(-1)).max())
    if not np.isfinite(far):
        raise ValueError("normalise_scene: non-finite Gaussian positions")
    scale = (radius / 1.1) / far if far > 0 else 1.0
    tf = SceneTransform(center=center, scale=scale)
    out = _apply_transform(g, tf, forward=True)
    if cameras_c2w is None:
        return out, tf
    return out, tf, tf.apply_c2w(_check_c2w(cameras_c2w))


def denormalise_scene(g: Gaussians, transform: SceneTransform, cameras_c2w=None):
    """Inverse of `normalise_scene`: returns g, or (g, c2w) when cameras_c2w is given."""
    g.validate()
    out = _apply_transform(g, transform, forward=False)
    if cameras_c2w is None:
        return out
    return out, transform.invert_c2w(_check_c2w(cameras_c2w))


def _apply_transform(g, tf, forward):
    xyz = tf.apply_points(g.xyz) if forward else tf.invert_points(g.xyz)
    ds = math.log(tf.scale) if forward else -math.log(tf.scale)
    scale = np.asarray(g.scale)
    return g._replace(xyz=xyz, scale=(scale.astype(np.float64) + ds).astype(scale.dtype))
