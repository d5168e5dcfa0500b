"""3DDiT stage 2: flow matching over a frozen 3DRAE's K tokens, conditioned on 0..n views and / or a trajectory.

    python -m scene3d.train --config=configs/rae3d.py:runlocal --workdir=/tmp/rae3d
    python -m scene3d.train --config=configs/dit3d.py:runlocal --workdir=/tmp/dit3d \
        --config.tokenizer.workdir=/tmp/rae3d
    python -m scene3d.train --config=configs/dit3d.py:encoder=siglip2-B,tokens=1024 --workdir=gs://... \
        --config.tokenizer.workdir=gs://.../rae3d_siglip2B_1024

Args: encoder=dinov2-B|siglip2-B and tokens=256|512|1024 describe the 3DRAE (used only without
``tokenizer.workdir``: then a random 3DRAE of configs/rae3d.py with these args is built, for tests; with a workdir
the run's own config.json is used), variant=tiny|S|B|L (DiT size), cond_mode=cross|in_context, bf16, runlocal.

Condition configurations per example (``cond.probs`` over uncond / one_view / views / trajectory /
views_trajectory), CFG dropout per type (``cond.drop_views``, ``cond.drop_trajectory``); sampling with
``flow.cfg_scale`` against the unconditional model.
"""
from configs import rae3d as rae3d_config
from configs.common import base_config
from scene3d.core.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, encoder="dinov2-B", tokens=512, variant="B", cond_mode="cross", runlocal=False, bf16=False)
    stage1 = rae3d_config.get_config(f"encoder={arg.encoder},tokens={arg.tokens}" + (",runlocal" if arg.runlocal
                                                                                     else ""))
    c = base_config()
    c.task = "dit3d"
    c.data = stage1.data.to_dict()
    # step None: the latest checkpoint; use_ema: its EMA weights when the run kept them.
    c.tokenizer = dict(workdir="", step=None, use_ema=True, scale=1.0, model=stage1.model.to_dict())
    c.model = dict(name="dit3d", variant=arg.variant, cond_mode=arg.cond_mode, ray_bands=4, traj_grid=4,
                   attn_impl="auto", scan=True, remat="none", dtype="bfloat16" if arg.bf16 else "float32",
                   param_dtype="float32")
    c.cond = dict(probs=dict(uncond=1.0, one_view=1.0, views=1.0, trajectory=1.0, views_trajectory=1.0),
                  drop_views=0.1, drop_trajectory=0.1)
    c.flow = dict(time_sampler="logit_normal", sample_steps=32, sampler="euler", sample_shift=1.0, cfg_scale=2.0)
    c.render = dict(num_scenes=2, num_seeds=2, trajectory_frames=24, arc_deg=60.0, elevation_deg=10.0, fps=8.0)

    c.global_batch_size = 64
    c.total_steps = 400_000
    c.optim.update(lr=1e-4, warmup_steps=2000, schedule="constant", weight_decay=0.0, b2=0.95, clip_norm=1.0)
    c.ema_decay = 0.9999
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.log_every = 100
    c.ckpt_every = 5000
    c.eval_every = 5000
    c.eval_batches = 4
    c.eval_batch_size = 16

    if arg.runlocal:
        c.model.update(variant="tiny", attn_impl="xla")
        c.flow.update(sample_steps=8)
        c.render.update(trajectory_frames=8)
        c.global_batch_size = 8
        c.total_steps = 400
        c.optim.update(lr=1e-3, warmup_steps=20)
        c.ema_decay = 0.0
        c.log_every = 25
        c.ckpt_every = 200
        c.eval_every = 200
        c.eval_batches = 1
        c.eval_batch_size = 2
    return c
