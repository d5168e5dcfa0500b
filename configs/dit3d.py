"""3DDiT stage 2: flow matching over a frozen 3DRAE's K tokens, conditioned on 0..n views and / or a trajectory.

    python -m scene3d.train --config=configs/rae3d.py:runlocal --workdir=/tmp/rae3d
    python -m scene3d.train --config=configs/dit3d.py:runlocal --workdir=/tmp/dit3d \
        --config.tokenizer.workdir=/tmp/rae3d
    python -m scene3d.train --config=configs/dit3d.py:card=dino2 --workdir=gs://... \
        --config.tokenizer.workdir=gs://.../rae3d_dino2
    python -m scene3d.train --config=configs/dit3d.py:encoder=siglip2-B,tokens=1024 --workdir=gs://... \
        --config.tokenizer.workdir=gs://.../rae3d_siglip2B_1024

Args:

- card=dino2|dino2-256|siglip2: the released models' token spaces (configs/rae3d.py's cards: K = 1024 / 256 / 256
  tokens at the tower's width 768); the DiT is the RAE work's DiT^DH-XL (``variant=XL``, width 1152 >= 768, and a
  wide DDT head of 2 blocks of width 2048), the dimension-dependent time shift on (``time_shift.by_dim``), tokens
  encoded from all 8 context views of the card's data and up to 4 of them as conditioning views.
- encoder=dinov2-B|siglip2-B and tokens=256|512|1024 describe the 3DRAE otherwise (both are used only without
  ``tokenizer.workdir``: then a random 3DRAE of configs/rae3d.py with these args is built, for tests; with a
  workdir the run's own config.json is used).
- variant=tiny|S|B|L|XL (DiT size; default B, XL with a card), cond_mode=cross|in_context, bf16, runlocal.
- head=N (blocks of the DDT-style wide head, ``model.head_depth``; 0 = DiT's final layer; default 2 with a card,
  else 0), head_width=W (``model.head_width``, default 2048; runlocal at most 64); ``model.head_heads`` (0: width
  / 128).
- time_shift=auto|dim|none: the dimension-dependent time shift s = sqrt(N * C / 4096) for N tokens of C channels
  (``time_shift.by_dim``; auto = on with a card), applied to the training times and to the sampler's time grid
  (``scene3d.diffusion.timesteps.shift_for_dim``); the ``flow`` section's own shifts must then stay 1.
- views=V: encode the DiT's training target tokens from V context views of each clip (``tokenizer.num_views``;
  the data then draws max(V, the stage-1 count) context views), whatever the number of conditioning views
  (``cond.num_views``: the stage-1 count of context views, at most 4).

Condition configurations per example (``cond.probs`` over uncond / one_view / views / trajectory /
views_trajectory), CFG dropout per type (``cond.drop_views``, ``cond.drop_trajectory``); sampling with
``flow.cfg_scale`` against the unconditional model. ``tokenizer.num_views`` / ``cond.num_views``: how many of the
context views the tokens are encoded from / the conditions may use (0 = all; both spread over the context views,
the first - the scene frame - always among them).
"""
from configs import rae3d as rae3d_config
from configs.common import base_config
from scene3d.core.config import parse_arg


TIME_SHIFTS = ("auto", "dim", "none")


def get_config(arg=None):
    arg = parse_arg(arg, card="", encoder="", tokens=0, variant="", cond_mode="cross", head=-1, head_width=2048,
                    time_shift="auto", views=0, runlocal=False, bf16=False)
    if arg.time_shift not in TIME_SHIFTS:
        raise ValueError(f"configs/dit3d.py: time_shift must be one of {TIME_SHIFTS}, got {arg.time_shift!r}")
    if arg.views < 0:
        raise ValueError(f"configs/dit3d.py: views must be >= 0 (0: the stage-1 count), got {arg.views}")
    card = bool(arg.card)
    # The stage-1 config of the card (configs/rae3d.py checks that encoder / tokens agree with it), or of
    # encoder / tokens (default dinov2-B, 512).
    s1_args = [f"card={arg.card}"] if card else []
    if arg.encoder or not card:
        s1_args.append(f"encoder={arg.encoder or 'dinov2-B'}")
    if arg.tokens or not card:
        s1_args.append(f"tokens={arg.tokens or 512}")
    stage1 = rae3d_config.get_config(",".join(s1_args + (["runlocal"] if arg.runlocal else [])))
    variant = arg.variant or ("XL" if card else "B")
    head = arg.head if arg.head >= 0 else (2 if card else 0)
    c = base_config()
    c.task = "dit3d"
    c.data = stage1.data.to_dict()
    stage1_views = int(c.data.views.num_context)
    # step None: the latest checkpoint; use_ema: its EMA weights when the run kept them. num_views: the context
    # views the target tokens are encoded from (0 = all).
    c.tokenizer = dict(workdir="", step=None, use_ema=True, scale=1.0, num_views=0, model=stage1.model.to_dict())
    c.model = dict(name="dit3d", variant=variant, cond_mode=arg.cond_mode, ray_bands=4, traj_grid=4,
                   head_depth=head, head_width=arg.head_width, head_heads=0,
                   attn_impl="auto", scan=True, remat="none", dtype="bfloat16" if arg.bf16 else "float32",
                   param_dtype="float32")
    # num_views: the context views conditions may use (0 = all), spread over the clip's context views.
    c.cond = dict(probs=dict(uncond=1.0, one_view=1.0, views=1.0, trajectory=1.0, views_trajectory=1.0),
                  drop_views=0.1, drop_trajectory=0.1, num_views=min(stage1_views, 4) if card else 0)
    c.flow = dict(time_sampler="logit_normal", sample_steps=32, sampler="euler", sample_shift=1.0, cfg_scale=2.0)
    # by_dim: shift training times and the sampling grid by sqrt(N * C / base_dim) (the RAE work's shift).
    c.time_shift = dict(by_dim=arg.time_shift == "dim" or (arg.time_shift == "auto" and card), base_dim=4096)
    # scene3d.evaluate's gFID / gKID (inception_weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth) and
    # gFVD (i3d_weights: pytorch-i3d's rgb_imagenet.pt) of samples vs held-out views; '' = not computed.
    # eval_conditions / eval_seeds: the condition types whose samples evaluation scores against the held-out
    # targets, and the seeds per condition (diversity across seeds needs >= 2).
    c.metrics = dict(lpips=None, inception_weights="", i3d_weights="",
                     eval_conditions=("uncond", "one_view", "views", "trajectory", "views_trajectory"), eval_seeds=2)
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

    if arg.views:
        # Target tokens from `views` context views; the conditions keep the stage-1 count (at most 4).
        w_lo, w_hi = c.data.views.window
        c.data.views.update(num_context=max(arg.views, stage1_views),
                            window=(max(w_lo, arg.views - 1), max(w_hi, arg.views - 1)))
        c.tokenizer.num_views = arg.views
        c.cond.num_views = min(stage1_views, arg.views, 4)

    if arg.runlocal:
        c.model.update(variant=arg.variant or "tiny", attn_impl="xla")
        if head:
            c.model.update(head_width=min(arg.head_width, 64))
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
