"""A tiny latent-diffusion run shared by tests/tasks/test_generate_ldm.py and tests/test_sample.py (trained once per
session; no EMA and no evaluation to keep it cheap): 8 synthetic PLY scenes with known dominant colours, each with
its caption file next to it (``scene_i.txt``: the run's text conditions come from the files),
configs/can3tok_ldm.py:runlocal shrunk to a 64-Gaussian Can3Tok (random init, no stage-1 workdir) and a 1-block
LatentDiT, two steps on a 2 x 4 mesh."""
from __future__ import annotations

import pathlib

import numpy as np

from scene3d.geometry import gaussians as gs

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "can3tok_ldm.py")
N = 64
# Dominant colour of each synthetic scene (RGB in [0, 1]) and its COLOURS name.
SCENE_COLOURS = [((0.9, 0.1, 0.1), "red"), ((0.1, 0.2, 0.9), "blue"), ((0.1, 0.8, 0.2), "green"),
                 ((0.95, 0.9, 0.1), "yellow"), ((0.9, 0.1, 0.1), "red"), ((0.1, 0.2, 0.9), "blue"),
                 ((0.1, 0.8, 0.2), "green"), ((0.95, 0.9, 0.1), "yellow")]

# A 64-Gaussian Can3Tok (sizes only: row layout, offsets, anchors and the rest stay the config's).
TINY_TOKENIZER = dict(num_gaussians=N, width=32, heads=2, num_latents=8, embed_dim=4, latent_dim=32, head_width=32,
                      head_depth=2, encoder_depth=1, decoder_depth=1, query_grid=2)
TINY = {
    "data.gaussians.num_gaussians": N, "data.gaussians.knn": 4,
    **{f"tokenizer.model.{k}": v for k, v in TINY_TOKENIZER.items()},
    "model.width": 32, "model.depth": 1, "model.heads": 2,
    "cond.text.dim": 16, "cond.text.max_words": 8,
    "global_batch_size": 8, "total_steps": 2, "ckpt_every": 1, "log_every": 1, "eval_every": 0,
    "eval_batch_size": 8, "eval_batches": 1, "num_sample_images": 2, "render.size": 24,
    "flow.sample_steps": 2, "optim.warmup_steps": 1, "async_checkpoint": False, "ema_decay": 0.0,
}


def scene(rgb, seed, n=96, share=0.8) -> gs.Gaussians:
    """n Gaussians in a blob, ``share`` of them coloured ``rgb`` and the rest grey, opaque."""
    rng = np.random.default_rng(seed)
    cols = np.where((np.arange(n) < share * n)[:, None], np.asarray(rgb), 0.5)
    cols = np.clip(cols + rng.uniform(-0.03, 0.03, (n, 3)), 0, 1)
    return gs.Gaussians(xyz=rng.normal(size=(n, 3)), f_dc=gs.rgb_to_dc(cols), opacity=np.full(n, 3.0),
                        scale=np.full((n, 3), -2.0) + rng.normal(0, 0.1, (n, 3)), rot=rng.normal(size=(n, 4)))


def caption(i: int) -> str:
    """The caption file text of synthetic scene i."""
    return f"a mostly {SCENE_COLOURS[i][1]} scene number {i}"


def write_scenes(folder: pathlib.Path, captions: bool = True) -> pathlib.Path:
    from scene3d.data import splat_io
    folder.mkdir(parents=True, exist_ok=True)
    for i, (rgb, _) in enumerate(SCENE_COLOURS):
        splat_io.write_ply(folder / f"scene_{i}.ply", scene(rgb, i))
        if captions:
            (folder / f"scene_{i}.txt").write_text(caption(i) + "\n")
    return folder


def tiny_config(scenes: pathlib.Path, cond: str = "text", args: str = "runlocal", config: str = CONFIG, **extra):
    """``config``:``args``,cond=``cond`` on the PLY scenes in ``scenes`` (the config's data.gaussians kept), shrunk
    by TINY (and ``extra``: dotted keys)."""
    from scene3d.core.config import load_config
    c = load_config(f"{config}:{args}" + (f",cond={cond}" if cond else ""))
    c.data = dict(name="ply", paths=str(scenes), eval_paths=str(scenes), gaussians=c.data.gaussians.to_dict())
    for k, v in {**TINY, **extra}.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node.get(p) if node is not None else None
        if node is None and k in TINY:
            continue  # e.g. the LDM's cond.text / flow keys in another task's config
        if isinstance(node.get(leaf), (tuple, list)) and not isinstance(v, (tuple, list)):
            v = (v,) * len(node[leaf])  # e.g. a (gx, gy, gz) query_grid shrunk to a cube
        node[leaf] = v
    return c


_CACHE: dict = {}


def trained_run(tmp_path_factory) -> pathlib.Path:
    """The workdir of the two-step text-conditioned run (trained on first use, then reused)."""
    if "run" not in _CACHE:
        from scene3d import train
        from scene3d.core import sharding as sh
        root = tmp_path_factory.mktemp("ldm")
        scenes = write_scenes(root / "scenes")
        workdir = root / "run"
        config = tiny_config(scenes)
        mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
        state = train.train_and_evaluate(config, str(workdir), mesh=mesh)
        _CACHE["run"] = (workdir, config, state)
    return _CACHE["run"]
