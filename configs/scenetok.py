"""SceneTok (CVPR 2026) stage 1: Scene Perceiver compressor + rectified-flow decoder trained jointly on posed views.

    python -m scene3d.train --config=configs/scenetok.py:runlocal --workdir=/tmp/stok_run
    python -m scene3d.train --config=configs/scenetok.py:variant=re10k,vae=/ckpt/vavae-f16d32.pt --workdir=... \
        --config.data.name=clips --config.data.source_dir=/data/re10k
    python -m scene3d.train --config=configs/scenetok.py:variant=dl3dv,vae=... --workdir=... \
        --config.data.name=clips --config.data.layout=dl3dv --config.data.source_dir=/data/dl3dv

Args: variant=re10k|dl3dv|tiny (``scene3d.models.scenetok.VARIANTS``: 512 x 64 or 1024 x 64 tokens; views per
example: re10k 12 context / 8 target, dl3dv 16 / 8), latent=
vavae|pixels|tiny_vae (image latents: VA-VAE f16c32, patchified pixels, or the tiny VAE trained from scratch
alongside), vae=PATH (official VA-VAE weights, safetensors or .pt; without it a 'vavae' compressor is random:
smoke tests only), bf16, runlocal (CPU-minutes: pixel latents on the built-in 'clips' scenes at 32 px, 2 context
and 2 target views, a tiny model, 1500 steps).

Release layout (``config.layout = 'release'``: ``scene3d.tasks.scenetok.ReleaseSceneTokTask``), trained on target
latents precomputed by ``python -m scene3d.data.encode_targets --config=configs/scenetok.py:ARGS``:
  release_re10k     the released RE10K recipe: VA-VAE context latents (vae=PATH), Video DC-AE target latents
                    (target_weights=PATH: F32T4C128_AE.safetensors) of 256 px RealEstate10K clips (clips=FOLDER, for
                    encode_targets; latents=DIR: where they are, data.path), 12 farthest-point context views, 8
                    target latents in 1-2 chunks, 50% mirrored clips, a random reference camera, uniform times per
                    chunk (20% shared), batch 32, AdamW 1e-4 with the MultiStep schedule, clipping at 0.05 and the
                    mean per-tensor gradient-norm skip at 1.0.
  release_runlocal  the same layout on the built-in 'clips' at 32 px through a RANDOM tiny Video DC-AE (4 x 4 x 8
                    latents): CPU minutes (README, "SceneTok in the release's layout").

The release's decoder renders VideoDC video latents (4 cameras per latent); here context and target views share
one image compressor, so the decoder takes one camera per latent (``temporal_downsample=1``) and the task sets both
networks' ``in_channels`` / ``input_size`` from the compressor. Recipe: velocity loss with logit-normal times (one
per chunk of target views), null scene tokens with probability 0.1 (CFG), KL weight as released (1e-10 for re10k,
0 for dl3dv), AdamW 1e-4 with warmup, EMA; Euler sampling with 25 steps.
"""
from configs.common import base_config
from scene3d.core.config import parse_arg

KL = {"re10k": 1e-10, "dl3dv": 0.0, "tiny": 1e-4}
# (context views, target views, frame window) per variant: RE10K-style clips 12 / 8, DL3DV-style 16 / 8.
VIEWS = {"re10k": (12, 8, (24, 96)), "dl3dv": (16, 8, (32, 128)), "tiny": (2, 4, (4, 32))}
LATENTS = ("vavae", "pixels", "tiny_vae")


def get_config(arg=None):
    arg = parse_arg(arg, variant="re10k", latent="vavae", vae="", runlocal=False, bf16=False, release_re10k=False,
                    release_runlocal=False, latents="", target_weights="", clips="")
    if arg.release_re10k or arg.release_runlocal:
        return release_config(arg)
    if arg.variant not in KL:
        raise ValueError(f"configs/scenetok.py: variant must be one of {sorted(KL)}, got {arg.variant!r}")
    latent = "pixels" if arg.runlocal and arg.latent == "vavae" and not arg.vae else arg.latent
    if latent not in LATENTS:
        raise ValueError(f"configs/scenetok.py: latent must be one of {LATENTS}, got {latent!r}")
    c = base_config()
    c.task = "scenetok"

    ctx, tgt, window = VIEWS[arg.variant]
    c.data = dict(name="builtin", preset="full",
                  views=dict(num_context=ctx, num_target=tgt, strategy="nearby", window=window,
                             resolution=(256, 256), relative_poses=True, scale_mode="max_camera_distance",
                             with_depth=False))
    c.image_compressor = {
        "vavae": dict(kind="vavae", variant="f16c32", weights=arg.vae or None, train=False),
        "pixels": dict(kind="pixels", patch=16, scale=1.0),
        "tiny_vae": dict(kind="vavae", variant="tiny", train=True),
    }[latent]
    # compressor / decoder: SceneTok keys overriding the variant (in_channels / input_size come from the latents).
    c.model = dict(name="scenetok", variant=arg.variant, compressor={}, decoder={}, attn_impl="auto", scan=True,
                   remat="none", dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.flow = dict(time_sampler="logit_normal", loss_weighting="velocity", num_chunks=1, null_prob=0.1,
                  sample_steps=25, sample_shift=1.0, sampler="euler", cfg_scale=1.0, cfg_interval=None)
    # kl_weight None = the variant's; vae_*: the loss of a trainable VA-VAE (latent=tiny_vae).
    c.loss = dict(kl_weight=KL[arg.variant], vae_recon_weight=1.0, vae_kl_weight=1e-6)
    # Evaluation: renders per view set for the per-pixel variance (uncertainty); LPIPS when weights are given:
    # lpips=dict(net='alex', backbone=TORCHVISION_ALEXNET.pth, lin=LPIPS_alex.pth) (or file=COMBINED).
    # scene3d.evaluate's rFID / rKID (inception_weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth) and rFVD
    # (i3d_weights: pytorch-i3d's rgb_imagenet.pt); '' = not computed. README, "Generation metrics".
    c.metrics = dict(render_samples=4, lpips=None, inception_weights="", i3d_weights="")
    # Figures: [context | target | rendered] rows; orbit GIFs around the point focus_depth in front of context 0.
    c.render = dict(num_scenes=2, orbit=dict(num_frames=24, focus_depth=1.0, elevation_deg=0.0, arc_deg=360.0,
                                             fps=8.0))

    c.global_batch_size = 64
    c.total_steps = 300_000
    c.optim.update(lr=1e-4, warmup_steps=5000, schedule="cosine", end_lr_factor=0.1, weight_decay=0.0, b2=0.99,
                   clip_norm=1.0)
    c.ema_decay = 0.9999
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.eval_batch_size = 32
    c.eval_batches = 4

    if arg.runlocal:
        # The 'clips' built-in preset: 128 smooth 32-frame orbits / walks at 32 px (8 held out).
        c.data.update(preset="clips")
        c.data.views.update(num_context=2, num_target=2, window=(3, 4), resolution=(32, 32))
        if latent == "pixels":
            c.image_compressor.update(patch=4, scale=2.0)  # pixel std ~0.5 -> about unit variance, like the noise
        c.model.update(variant="tiny", attn_impl="xla",
                       compressor=dict(width=64, heads=4, depth=2, patch=2, num_tokens=32, token_dim=8, ray_patch=4),
                       decoder=dict(width=64, heads=4, depth=3, patch=1, ray_patch=4, freq_dim=64,
                                    prediction="x"))
        # x-prediction: 48-dim pixel-patch latents on a width-64 decoder (see scenetok.SceneTokDecoder).
        # Training times pushed to the noise end (logit-normal mean 1.5, shift 3: median t 0.93), where only the
        # tokens inform the decoder; a CPU-minutes model cannot also learn the low-noise detail, and renders that
        # half-learn it lose PSNR. 5 Euler steps (shift 3): more steps give sharper renders of lower PSNR (1500
        # steps: 18.6 dB at 5 steps, 17.9 at 10, 17.0 at 20, 18.9 one-step conditional mean; README).
        c.flow.update(time_sampler="logit_normal,mean=1.5,shift=3.0", sample_shift=3.0, sample_steps=5)
        c.loss.update(kl_weight=1e-6)  # 1e-4 collapses the tiny model's tokens within a few hundred steps
        c.render.orbit.update(num_frames=12, fps=6.0)
        c.global_batch_size = 8
        c.total_steps = 1500
        c.optim.update(lr=1e-3, warmup_steps=20, schedule="cosine", end_lr_factor=0.1)
        c.ema_decay = 0.0
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.log_every = 20
        c.ckpt_every = 250
        c.eval_every = 250
        c.eval_batches = 1
        c.eval_batch_size = 8
    return c


def release_config(arg):
    """The release-layout variants (module docstring): release_re10k, release_runlocal."""
    from scene3d.data.target_latents import RANDOM_TINY_AE
    if arg.release_re10k and arg.release_runlocal:
        raise ValueError("configs/scenetok.py: give release_re10k or release_runlocal, not both")
    c = base_config()
    c.task = "scenetok"
    c.layout = "release"
    # data.source: the clips encode_targets reads (--config); data.path: the latents it writes and the run reads.
    c.data = dict(name="target_latents", path=arg.latents or "~/.cache/scene3d/target_latents/re10k_videodc",
                  resolution=(256, 256), source=dict(name="clips", layout="re10k", source_dir=arg.clips or None),
                  views=dict(num_context=12, num_target=8, num_target_split=2, target_split_prob=0.7, chunk_gap=4,
                             eval_chunk_gap=8, flip_prob=0.5, random_reference=True),
                  num_threads=4, prefetch=4)
    c.image_compressor = dict(kind="vavae", variant="f16c32", weights=arg.vae or None, train=False)
    # The target autoencoder (the one the latents were encoded with; decodes renders for figures and metrics).
    c.target = dict(kind="videodc", variant="dc-ae-f32t4c128", overrides={}, weights=arg.target_weights or None,
                    config=None, seed=None)
    c.model = dict(name="scenetok", variant="re10k", compressor={}, decoder={}, attn_impl="auto", scan=True,
                   remat="none", dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    # The release's rf scheduler: 'shifted' weighting with shift 1 (uniform times), random_chunked_uniform over
    # num_target_split = 2 chunks; no null-token training in the RE10K scratch run (its train.cfg_train is off).
    c.flow = dict(time_sampler="uniform", loss_weighting="velocity", num_chunks=2, null_prob=0.0, sample_steps=25,
                  sample_shift=1.0, sampler="euler", cfg_scale=1.0, cfg_interval=None)
    c.release = dict(shared_time_prob=0.2, latent_scale=1.0, context_sample=True)
    c.loss = dict(kl_weight=1e-10)
    c.metrics = dict(lpips=None, inception_weights="", i3d_weights="")
    c.render = dict(num_scenes=2)
    c.global_batch_size = 32
    c.total_steps = 300_000
    # AdamW (torch defaults: weight decay 0.01), LinearLR from 5e-4 x lr over 2000 steps, then MultiStepLR (x 0.4
    # at 10k, 20k, 40k, 500k steps after the warmup); gradient clipping at 0.05 (main.yaml); steps whose mean
    # per-tensor gradient norm exceeds 1.0 skipped (train.grad_norm_skip_threshold).
    c.optim.update(lr=1e-4, schedule="multistep", warmup_steps=2000, warmup_start_factor=5e-4,
                   milestones=(10_000, 20_000, 40_000, 500_000), gamma=0.4, weight_decay=0.01, b1=0.9, b2=0.999,
                   eps=1e-8, clip_norm=0.05, skip_grad_norm=1.0, skip_grad_norm_kind="mean_tensor")
    c.ema_decay = 0.0  # the release trains without EMA
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.eval_every = 5000
    c.eval_batch_size = 8
    c.eval_batches = 4

    if arg.release_runlocal:
        # The built-in 'clips' (128 smooth 32-frame orbits / walks at 32 px, 8 held out) through a random tiny
        # Video DC-AE: 8 latents of 4 x 4 x 8 per clip (std ~2.8 after the 0.493 scaling; latent_scale brings them
        # to ~1). Pixel patches for the context; 4 farthest-point context views, 4 target latents (16 frames) in
        # 1-2 chunks of 2.
        c.data.update(path=arg.latents or "~/.cache/scene3d/target_latents/release_runlocal", resolution=(32, 32),
                      source=dict(name="builtin", preset="clips"), num_threads=1, prefetch=2)
        c.data.views.update(num_context=4, num_target=4, chunk_gap=2, eval_chunk_gap=4)
        c.image_compressor = dict(kind="pixels", patch=4, scale=2.0)
        c.target = dict(RANDOM_TINY_AE, weights=None, config=None)
        c.model.update(variant="tiny", attn_impl="xla",
                       compressor=dict(width=64, heads=4, depth=2, patch=2, num_tokens=32, token_dim=8, ray_patch=4),
                       decoder=dict(width=64, heads=4, depth=3, patch=1, ray_patch=8, freq_dim=64))
        c.flow.update(sample_steps=10)
        c.release.update(latent_scale=0.35)
        c.loss.update(kl_weight=1e-6)
        c.global_batch_size = 8
        c.total_steps = 1500
        c.optim.update(lr=1e-3, warmup_steps=50, milestones=(600, 1000))
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.log_every = 25
        c.ckpt_every = 500
        c.eval_every = 250
        c.eval_batches = 1
        c.eval_batch_size = 8
    return c
