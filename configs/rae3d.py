"""3DRAE ("Any 3D Scene is Worth 1K Tokens") stage 1: frozen 2D tower -> 3D perceiver -> K tokens -> ray decoder.

    python -m scene3d.train --config=configs/rae3d.py:runlocal --workdir=/tmp/rae3d
    python -m scene3d.train --config=configs/rae3d.py:encoder=dinov2-B,tokens=512 --workdir=gs://... \
        --config.model.encoder_weights=/ckpt/dinov2-base/model.safetensors
    python -m scene3d.train --config=configs/rae3d.py:encoder=siglip2-B,tokens=1024,bf16 --workdir=...

Args: encoder=dinov2-B|siglip2-B (the frozen tower, ``scene3d.models.vit.VARIANTS``; any name there works),
tokens=256|512|1024 (K), variant=S|B|L (perceiver / decoder sizes, ``scene3d.models.rae3d.VARIANTS``), bf16,
runlocal (CPU minutes on the built-in scenes: the 'tiny-dinov2' tower with RANDOM weights - no download - at
56 x 56, 2 context + 2 target views, K = 64, a tiny perceiver).

Views are 224 x 224 for DINOv2 (16 x 16 patches of 14) and 256 x 256 for SigLIP2 (16 x 16 patches of 16); the
decoder renders patches of the tower's patch size. Set ``model.encoder_weights`` to an HF checkpoint of the tower
for real runs (without it the tower stays random, with a warning).
"""
from configs.common import base_config
from scene3d.core.config import parse_arg

RESOLUTION = {"dinov2": 224, "dinov2_reg": 224, "siglip2": 256}


def get_config(arg=None):
    arg = parse_arg(arg, encoder="dinov2-B", tokens=512, variant="B", runlocal=False, bf16=False)
    from scene3d.models import vit
    if arg.encoder not in vit.VARIANTS:
        raise ValueError(f"configs/rae3d.py: encoder must be one of {sorted(vit.VARIANTS)}, got {arg.encoder!r}")
    if arg.tokens < 1:
        raise ValueError(f"configs/rae3d.py: tokens must be >= 1, got {arg.tokens}")
    c = base_config()
    c.task = "rae3d"
    res = RESOLUTION[vit.VARIANTS[arg.encoder]["family"]]
    c.data = dict(name="builtin", preset="full",
                  views=dict(num_context=4, num_target=4, strategy="nearby", window=(4, 24), resolution=(res, res)))
    c.model = dict(name="rae3d", variant=arg.variant, encoder=arg.encoder, num_tokens=arg.tokens,
                   points="depth", align=False, view_chunk=4, encoder_weights="", attn_impl="auto", scan=True,
                   remat="none", dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.loss = dict(l1=1.0, l2=0.0, perceptual=0.1, perceptual_kind="random_conv", perceptual_widths=(16, 32, 64),
                  points=0.1, conf_alpha=0.2, align=0.0, token_noise=0.0, decode_context=True)
    c.render = dict(num_scenes=2, num_output_scenes=1, trajectory_frames=24, arc_deg=60.0, elevation_deg=10.0,
                    fps=8.0, ply_keep=0.8)

    c.global_batch_size = 64
    c.total_steps = 200_000
    c.optim.update(lr=2e-4, warmup_steps=2000, schedule="cosine", end_lr_factor=0.1, weight_decay=0.05,
                   b2=0.95, clip_norm=1.0)
    c.ema_decay = 0.9999
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.log_every = 100
    c.ckpt_every = 5000
    c.eval_every = 5000
    c.eval_batches = 8
    c.eval_batch_size = 16

    if arg.runlocal:
        c.data.update(preset="runlocal")
        c.data.views.update(num_context=2, num_target=2, window=(2, 6), resolution=(56, 56))
        c.model.update(variant="tiny", encoder="tiny-dinov2", num_tokens=64, dec_patch=7, attn_impl="xla",
                       view_chunk=2)
        c.loss.update(perceptual=0.05, points=0.1)
        c.render.update(trajectory_frames=12)
        c.global_batch_size = 8
        c.total_steps = 600
        c.optim.update(lr=1e-3, warmup_steps=30, end_lr_factor=0.1, weight_decay=0.0, b2=0.99)
        c.ema_decay = 0.0
        c.log_every = 25
        c.ckpt_every = 300
        c.eval_every = 100
        c.eval_batches = 1
        c.eval_batch_size = 2  # the runlocal preset holds 2 eval scenes
    return c
