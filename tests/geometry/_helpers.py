"""Shared random cameras for the geometry tests."""
import numpy as np
from scipy.spatial.transform import Rotation


def random_cameras(n, seed=0, height=24, width=32):
    """n OpenCV c2w poses looking roughly at the origin from distance ~3, and varied normalised intrinsics."""
    rng = np.random.default_rng(seed)
    eye = rng.standard_normal((n, 3))
    eye = 3 * eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    z = -eye / np.linalg.norm(eye, axis=-1, keepdims=True)
    x = np.cross(z, rng.standard_normal((n, 3)))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = np.stack([x, y, z], -1)
    c2w[:, :3, 3] = eye
    intr = np.stack([rng.uniform(0.6, 1.2, n), rng.uniform(0.6, 1.2, n), rng.uniform(0.4, 0.6, n),
                     rng.uniform(0.4, 0.6, n)], -1)
    return c2w, intr


def random_pose(seed):
    rng = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=seed).as_matrix()
    T[:3, 3] = rng.standard_normal(3)
    return T
