"""SceneGen (SceneTok's stage 2): a flow-matching DiT over the scene tokens of a FROZEN SceneTok run
(configs/scenetok.py), conditioned on 1..n context views (image latents + cameras) and the anchor cameras, with
classifier-free guidance over the scene condition.

    python -m scene3d.train --config=configs/scenetok.py:runlocal --workdir=/tmp/stok_run
    python -m scene3d.train --config=configs/scenegen.py:runlocal,tokenizer=/tmp/stok_run --workdir=/tmp/sgen_run
    python -m scene3d.train --config=configs/scenegen.py:variant=re10k,tokenizer=/runs/scenetok_re10k --workdir=...

Args: variant=re10k|tiny (``scene3d.models.scenegen.VARIANTS``), data=re10k|dl3dv (views per example and the
stage-1 variant without a tokenizer run: RE10K-style 12 context / 8 target views, DL3DV-style 16 / 8),
tokenizer=STAGE1_WORKDIR (its config.json gives the
stage-1 architecture, image compressor and view size, its checkpoint the weights (EMA if kept); empty: a randomly
initialised stage 1 from ``tokenizer.model`` / ``tokenizer.image_compressor``, for smoke tests only), shift=S
(training and sampling time shift; the release trained 1, 4 and 12), bf16, runlocal (CPU-minutes, matching
configs/scenetok.py:runlocal), recipe=ours|release. ``recipe=release`` trains as the release's scenegen_shift*
experiments: 1-3 conditioning views separate from the anchors (a random context view, whose frame all poses take,
then two other frames of the clip, each kept with probability 0.5), uniform times then shifted by ``shift``, no
condition dropout (the release trains without CFG and samples with 150 Euler steps, guidance 1).

The data must give the stage-1 view size (``data.views.resolution``); the context views are the ones whose tokens
are generated, every one of them is a potential condition (view 0 always, others with probability 1 - p_view) and
their cameras are the anchors.
"""
import ml_collections

from configs import scenetok as scenetok_config
from configs.common import base_config
from scene3d.core.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="re10k", data="re10k", tokenizer="", shift=4.0, runlocal=False, bf16=False,
                    recipe="ours")
    if arg.recipe not in ("ours", "release"):
        raise ValueError(f"configs/scenegen.py: recipe must be 'ours' or 'release', got {arg.recipe!r}")
    if arg.data not in ("re10k", "dl3dv"):
        raise ValueError(f"configs/scenegen.py: data must be 're10k' or 'dl3dv', got {arg.data!r}")
    c = base_config()
    c.task = "scenegen"

    ctx, tgt, window = scenetok_config.VIEWS[arg.data]  # the stage-1 variant's views: 12 / 8 or 16 / 8
    c.data = dict(name="builtin", preset="full",
                  views=dict(num_context=ctx, num_target=tgt, strategy="nearby", window=window,
                             resolution=(256, 256), relative_poses=True, scale_mode="max_camera_distance",
                             with_depth=False))
    # The frozen stage 1. workdir: a configs/scenetok.py run; model / image_compressor: used only without one.
    c.tokenizer = dict(workdir=arg.tokenizer or None, step=None, use_ema=True, sample_tokens=False,
                       image_compressor=dict(kind="vavae", variant="f16c32", train=False),
                       model=dict(name="scenetok", variant=arg.data, compressor={}, decoder={}, attn_impl="auto",
                                  scan=True, remat="none", dtype="bfloat16" if arg.bf16 else "float32",
                                  param_dtype="float32"))
    # latent_patch: patch of the conditioning latents; camera_patch: Pluecker-map pixels per latent token.
    c.model = dict(name="scenegen", variant=arg.variant, latent_patch=1, camera_patch=8, token_scale=0.1,
                   camera_dtype="bfloat16", camera_dropout=0.1, attn_impl="auto", scan=True, remat="none",
                   dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.cond = dict(p_view=0.5, p_uncond=0.1)
    c.flow = dict(time_sampler=f"logit_normal,shift={float(arg.shift)}", sample_shift=float(arg.shift),
                  sample_steps=50, sampler="euler", cfg_scale=3.0, cfg_interval=None)
    # Evaluation / figures: tokens generated from the first num_cond_views context views; the stage-1 renderer's
    # decode settings (None: the stage-1 run's flow settings).
    c.sample = dict(num_cond_views=1, in_eval=True)
    c.decode = dict(sample_steps=None, cfg_scale=None)
    # scene3d.evaluate's gFID / gKID (inception_weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth) and
    # gFVD (i3d_weights: pytorch-i3d's rgb_imagenet.pt) of samples vs held-out views; '' = not computed.
    c.metrics = dict(lpips=None, inception_weights="", i3d_weights="")
    c.render = dict(num_scenes=2, orbit=dict(num_frames=24, focus_depth=1.0, elevation_deg=0.0, arc_deg=360.0,
                                             fps=8.0))

    c.global_batch_size = 64
    c.total_steps = 300_000
    c.optim.update(lr=1e-4, warmup_steps=5000, b2=0.99, clip_norm=1.0, weight_decay=0.0)
    c.ema_decay = 0.9999
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.eval_batch_size = 32

    if arg.recipe == "release":
        c.cond = dict(layout="release", max_views=3, p_view=0.5, p_uncond=0.0)
        c.flow.update(time_sampler=f"uniform,shift={float(arg.shift)}", sample_steps=150, cfg_scale=1.0)

    if arg.runlocal:  # configs/scenetok.py:runlocal's data and stage 1 (one source: no copies to drift apart)
        stage1 = scenetok_config.get_config("runlocal")
        c.data = ml_collections.ConfigDict(stage1.data.to_dict())
        c.tokenizer.image_compressor = ml_collections.ConfigDict(stage1.image_compressor.to_dict())
        c.tokenizer.model = ml_collections.ConfigDict(stage1.model.to_dict())
        # token_scale ~ 1 / std of the runlocal stage-1 tokens (train/suggested_token_scale 0.22 after its 1500 steps)
        c.model.update(variant="tiny", hidden=64, depth=2, heads=4, camera_patch=2, token_scale=0.25,
                       camera_dtype="float32", attn_impl="xla")
        c.flow.update(sample_steps=10, cfg_scale=1.0 if arg.recipe == "release" else 2.0)
        if arg.shift == 4.0:
            kind = "uniform" if arg.recipe == "release" else "logit_normal"
            c.flow.update(time_sampler=f"{kind},shift=2.0", sample_shift=2.0)
        c.render.orbit.update(num_frames=12, fps=6.0)
        c.global_batch_size = 8
        c.total_steps = 400
        c.optim.update(lr=1e-3, warmup_steps=20)
        c.ema_decay = 0.0
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.log_every = 20
        c.ckpt_every = 200
        c.eval_every = 200
        c.eval_batches = 1
        c.eval_batch_size = 8
    return c
