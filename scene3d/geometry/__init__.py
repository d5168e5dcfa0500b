"""scene3d.geometry: cameras (OpenCV c2w, normalised intrinsics), rays / Pluecker maps, point maps, SO(3),
camera file formats and trajectories. Imports only scene3d.core (and numpy / jax)."""
from scene3d.geometry import cameras, conventions, rays, so3, trajectories
from scene3d.geometry.cameras import (Cameras, camera_centers, camera_to_world, in_image, intrinsics_from_fov,
                                      intrinsics_matrix, invert_rigid, look_at, make_c2w, normalise_intrinsics,
                                      normalise_scene_scale, project, relative_poses, unproject, world_to_camera)
from scene3d.geometry.rays import depth_to_points, plucker, plucker_map, ray_map, ray_map_features
from scene3d.geometry.so3 import matrix_to_quat, quat_multiply, quat_slerp, quat_to_matrix, random_rotation
from scene3d.geometry.trajectories import focus_orbit, forward_walk, interpolate_poses, orbit, orbit_cameras, spiral
