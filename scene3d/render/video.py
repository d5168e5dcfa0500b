"""Trajectory videos: render a Gaussian scene along cameras, write PNG frames or an animated GIF (PIL).

Frames are uint8 (n, H, W, 3) arrays; float frames in [0, 1] are accepted and converted (`splat.to_uint8`).
Files are written atomically (temp file in the same folder, then `os.replace`), so a reader never sees a
half-written image. Note that Pillow merges identical consecutive GIF frames (adding their durations).
"""
from __future__ import annotations

import io
import os
from typing import List, Optional

import numpy as np
from PIL import Image

from scene3d.core.io import write_bytes
from scene3d.geometry.cameras import Cameras
from scene3d.geometry.gaussians import Gaussians
from scene3d.render.splat import BlockSizes, render_checked, to_uint8


def render_trajectory(g: Gaussians, cams: Cameras, *, height: Optional[int] = None, width: Optional[int] = None,
                      background=0.0, sh_degree: Optional[int] = None,
                      blocks: BlockSizes = BlockSizes()) -> np.ndarray:
    """Render `g` from every camera of `cams` -> uint8 frames (n, H, W, 3) (one compile for all frames).

    Image size from the arguments or `cams.height` / `cams.width`.
    """
    if not isinstance(cams, Cameras):
        raise ValueError(f"render_trajectory cameras: expected a geometry.cameras.Cameras, got {type(cams).__name__}")
    h, w = height or cams.height, width or cams.width
    if h is None or w is None:
        raise ValueError("render_trajectory: image size unknown; pass height and width or set Cameras.height/width")
    frames = [to_uint8(render_checked(g, cams.c2w[i], cams.intrinsics[i], h, w, background=background,
                                      sh_degree=sh_degree, blocks=blocks)["rgb"]) for i in range(len(cams))]
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def _as_frames(frames, name) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{name} frames: expected shape (n >= 1, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"{name} frames: expected uint8 or float in [0, 1], got dtype {frames.dtype}")
        frames = to_uint8(frames)
    return frames


def write_frames(directory, frames, *, prefix: str = "frame_") -> List[str]:
    """Write frames (n, H, W, 3) as `{directory}/{prefix}{i:05d}.png` (folder created); returns the paths."""
    frames = _as_frames(frames, "write_frames")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        path = os.path.join(directory, f"{prefix}{i:05d}.png")
        write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def write_gif(path, frames, fps: float = 10.0, *, loop: int = 0) -> None:
    """Write frames (n, H, W, 3) as an animated GIF at `fps` (loop=0: forever), atomically."""
    frames = _as_frames(frames, "write_gif")
    if not fps > 0:
        raise ValueError(f"write_gif fps: expected > 0, got {fps}")
    path = os.fspath(path)
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)),
                   loop=loop)
    write_bytes(path, buf.getvalue())


def write_mp4(path, frames, fps: float = 10.0, *, crf: int = 18) -> None:
    """Write frames (n, H, W, 3) as an H.264 MP4 (yuv420p, PyAV's bundled FFmpeg) at `fps`, atomically. Odd frame
    sizes are padded by one pixel (edge copy): yuv420p needs even dimensions."""
    import av

    frames = _as_frames(frames, "write_mp4")
    if not fps > 0:
        raise ValueError(f"write_mp4 fps: expected > 0, got {fps}")
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)) if float(fps).is_integer() else float(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    write_bytes(os.fspath(path), buf.getvalue())


def read_video(path) -> np.ndarray:
    """Frames (n, H, W, 3) uint8 of a video file (MP4 / GIF / ...) decoded with PyAV."""
    import av

    try:
        with av.open(os.fspath(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except (av.error.FFmpegError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode as a video ({e})") from None
