"""3DRAE ("Any 3D Scene is Worth 1K Tokens") stage 1: frozen 2D tower -> 3D perceiver -> K tokens -> ray decoder.

    python -m scene3d.train --config=configs/rae3d.py:runlocal --workdir=/tmp/rae3d
    python -m scene3d.train --config=configs/rae3d.py:runlocal,recipe=rae --workdir=/tmp/rae3d_recipe
    python -m scene3d.train --config=configs/rae3d.py:card=dino2 --workdir=gs://... \
        --config.model.encoder_weights=/snapshots/dinov2-base --config.loss.lpips_weights.file=/w/lpips_vgg.pth
    python -m scene3d.train --config=configs/rae3d.py:encoder=siglip2-B,tokens=1024,bf16 --workdir=...

Args:

- card=dino2|dino2-256|siglip2: the released models (their Hugging Face card): K = 1024 (``dino2``) or 256 tokens
  at the tower's width (768 for the ViT-B DINOv2 / SigLIP2 towers: ``latent_dim`` = 768, no projection to a small
  channel count), perceiver / decoder 'B', the RAE recipe on (``recipe=rae``), a variable number of context views
  (2-8 of 8). ``model.latent_shape`` of the built model is (K, 768). ``encoder`` / ``tokens`` may be given too but
  must agree with the card.
- encoder=dinov2-B|siglip2-B (the frozen tower, ``scene3d.models.vit.VARIANTS``; any name there works; default
  dinov2-B), tokens=256|512|1024 (K, default 512), variant=S|B|L (perceiver / decoder sizes,
  ``scene3d.models.rae3d.VARIANTS``), bf16.
- recipe=none|rae (default: rae with a card, none otherwise): the RAE decoder-training recipe
  (``scene3d/tasks/rae3d.py``): Gaussian noise on the tokens (sigma ~ |N(0, tau^2)|, ``loss.token_noise`` = tau),
  LPIPS as a loss (``loss.lpips``; weights from ``loss.lpips_weights``, files: nothing downloads), a hinge GAN on
  frozen features with a delayed start and the adaptive weight (``loss.adv``, ``loss.disc_*``).
- runlocal: CPU minutes on the built-in scenes: the 'tiny-dinov2' tower with RANDOM weights (no download) at
  56 x 56 ('tiny-siglip2' at 64 x 64 for a SigLIP2 tower), 2 context + 2 target views, K = 64, a tiny perceiver.
  With ``recipe=rae``: token noise and the GAN (on a fixed random conv pyramid; the discriminator from step 100,
  its term in the decoder's loss from step 150); LPIPS stays off unless ``loss.lpips`` and its weights are set.
  Every evaluation prints the held-out PSNR beside two baselines: ``psnr_mean_image`` (the mean training image)
  and ``psnr_context_mean`` (each target predicted by the mean of its context views).

Views are 224 x 224 for DINOv2 (16 x 16 patches of 14) and 256 x 256 for SigLIP2 (16 x 16 patches of 16); the
decoder renders patches of the tower's patch size. Set ``model.encoder_weights`` to an HF checkpoint of the tower
(a ``.safetensors`` / ``.bin`` file or a downloaded snapshot folder, e.g. ``save_pretrained`` output) for real runs
(without it the tower stays random, with a warning).
"""
from configs.common import base_config
from scene3d.core.config import parse_arg

RESOLUTION = {"dinov2": 224, "dinov2_reg": 224, "siglip2": 256}
# The released models: tower, K; their tokens keep the tower's width (latent_dim = the tower's dim).
CARDS = {
    "dino2": dict(encoder="dinov2-B", tokens=1024),
    "dino2-256": dict(encoder="dinov2-B", tokens=256),
    "siglip2": dict(encoder="siglip2-B", tokens=256),
}
RECIPES = ("none", "rae")


def get_config(arg=None):
    arg = parse_arg(arg, card="", encoder="", tokens=0, variant="B", recipe="", runlocal=False, bf16=False)
    from scene3d.models import vit
    if arg.card:
        if arg.card not in CARDS:
            raise ValueError(f"configs/rae3d.py: card must be one of {sorted(CARDS)}, got {arg.card!r}")
        card = CARDS[arg.card]
        for key in ("encoder", "tokens"):
            if arg[key] and arg[key] != card[key]:
                raise ValueError(f"configs/rae3d.py: card={arg.card} has {key}={card[key]!r}, got {key}={arg[key]!r}")
            arg[key] = card[key]
    arg.encoder = arg.encoder or "dinov2-B"
    arg.tokens = arg.tokens or 512
    recipe = arg.recipe or ("rae" if arg.card else "none")
    if recipe not in RECIPES:
        raise ValueError(f"configs/rae3d.py: recipe must be one of {RECIPES}, got {arg.recipe!r}")
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
    # context_views: (min, max) context views per training example (a view mask; None = all of them).
    # token_noise: tau of the noise-augmented decoder (0 = off); token_noise_dist: half_normal (RAE) | uniform.
    # lpips: weight of LPIPS (weights: lpips_weights, as config.metrics.lpips). adv: weight of the hinge GAN term
    # (times the adaptive weight, clipped to adv_max_weight); disc_features: tower | random_conv (frozen
    # features the discriminator heads read); disc_start / adv_start: the steps at which the discriminator
    # starts training and the generator's GAN term switches on; disc_loss: weight of the discriminator's loss.
    c.loss = dict(l1=1.0, l2=0.0, perceptual=0.1, perceptual_kind="random_conv", perceptual_widths=(16, 32, 64),
                  points=0.1, conf_alpha=0.2, align=0.0, token_noise=0.0, token_noise_dist="half_normal",
                  decode_context=True, context_views=None, lpips=0.0, lpips_weights=dict(),
                  adv=0.0, adv_adaptive=True, adv_max_weight=1e4, adv_start=0, disc_start=0, disc_loss=1.0,
                  disc_features="tower", disc_widths=(16, 32, 64), disc_hidden=256)
    c.render = dict(num_scenes=2, num_output_scenes=1, trajectory_frames=24, arc_deg=60.0, elevation_deg=10.0,
                    fps=8.0, ply_keep=0.8)
    # Evaluation (scene3d/tasks/rae3d.py, scene3d.evaluate). lpips: LPIPS weights (None: not computed; as
    # loss.lpips_weights); baselines: training examples whose target views make the mean-image baseline (0: off);
    # chamfer_points: valid pixels per scene the Chamfer distance is computed on (0: all); views_sweep: context-view
    # counts of scene3d.evaluate's view-count sweep (same targets; --views_sweep overrides; () = none);
    # inception_weights / i3d_weights: rFID / rKID / rFVD networks ('' = not computed).
    c.metrics = dict(lpips=None, baselines=256, chamfer_points=16384, views_sweep=(), inception_weights="",
                     i3d_weights="")

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

    if arg.card:
        # 2-8 context views per example (the tokens' width is set below: the tower's).
        c.data.views.update(num_context=8, num_target=4, window=(8, 32))
        c.loss.update(context_views=(2, 8))
    if recipe == "rae":
        # The RAE decoder recipe: noise-augmented decoding (tau 0.8 on the layer-normed tokens), L1 + LPIPS,
        # a hinge GAN on the frozen tower's features from 30% of training, its term in the loss from 40%.
        c.loss.update(token_noise=0.8, token_noise_dist="half_normal", perceptual=0.0, lpips=1.0,
                      lpips_weights=dict(net="vgg"), adv=0.75, disc_features="tower",
                      disc_start=int(0.3 * c.total_steps), adv_start=int(0.4 * c.total_steps))

    if arg.runlocal:
        c.data.update(preset="runlocal")
        siglip = vit.VARIANTS[arg.encoder]["family"] == "siglip2"  # the tiny tower of the same family
        c.data.views.update(num_context=2, num_target=2, window=(2, 6), resolution=(64, 64) if siglip else (56, 56))
        c.model.update(variant="tiny", encoder="tiny-siglip2" if siglip else "tiny-dinov2", num_tokens=64,
                       dec_patch=8 if siglip else 7, attn_impl="xla", view_chunk=2)
        c.loss.update(perceptual=0.05, points=0.1, context_views=None)
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
        if recipe == "rae":
            # Cheap parts only: token noise, the GAN on a fixed random conv pyramid from step 100 (no LPIPS
            # weights here: set loss.lpips and loss.lpips_weights to add it).
            c.loss.update(lpips=0.0, lpips_weights=dict(), disc_features="random_conv", disc_hidden=32,
                          disc_start=100, adv_start=150, adv=0.5)
    if arg.card:
        c.model.latent_dim = int(vit.VARIANTS[c.model.encoder]["dim"])  # tokens at the tower's width
    return c
