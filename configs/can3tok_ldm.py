"""Latent diffusion on Can3Tok latents (issue 4, item 6; issue 15, item 5): a LatentDiT trained by flow matching on
the latents of a FROZEN stage-1 Can3Tok (configs/can3tok.py), conditioned on a class label, a caption or an image,
with classifier-free guidance.

    python -m scene3d.train --config=configs/can3tok.py:runlocal --workdir=/tmp/can3tok
    python -m scene3d.train --config=configs/can3tok_ldm.py:runlocal,tokenizer=/tmp/can3tok --workdir=/tmp/ldm
    python -m scene3d.sample --workdir=/tmp/ldm --num=4 --cond="a bright scene, mostly white" --out=/tmp/ldm/samples
    # a release-size Can3Tok run on captioned PLY scenes (scenes/<name>.ply + scenes/<name>.txt), text from a local
    # CLIP / T5 text tower:
    python -m scene3d.train --config=configs/can3tok_ldm.py:stage1=release,variant=B,tokenizer=/runs/c3t_release \
        --config.data.name=ply --config.data.paths=/data/scenes --config.cond.text.backbone=hf_local \
        --config.cond.text.path=/models/clip_text --config.cond.text.max_words=32 --workdir=/runs/ldm_B

Args: variant=tiny|S|B|L|XL (LatentDiT size), stage1=release|paper|tiny (the configs/can3tok.py variant whose data
section and tokenizer architecture the run takes: its row layout (release18 rows, 4 voxel columns read at
``input_offset=4``), Gaussian count, normalisation radius, anchors; runlocal: the stage-1 runlocal, as trained by
``configs/can3tok.py:runlocal``), cond=label|text|image|none, tokenizer=STAGE1_WORKDIR (its config.json gives the
architecture and must match ``stage1``'s row layout, its checkpoint the weights (EMA if kept); empty: a randomly
initialised tokenizer of ``tokenizer.model``, for smoke tests only), bf16, runlocal (CPU-minutes size on the
built-in scenes).

Latent: the posterior mean of z (``tokenizer.sample_posterior=False``) viewed as the decoder's (T, E) tokens, times
``tokenizer.scale``. Set the scale so that the latents have unit variance: the train metrics report
``latent_std`` (of z) and ``suggested_scale`` = 1 / latent_std from the first step on.

Conditions (``cond.source``, ``scene3d.tasks.generate.SceneConditions``): 'file' takes each scene's own caption /
conditioning image / label from the dataset (PLY folders: ``<stem>.txt`` or ``caption.txt`` and ``<stem>.png`` or
``cond.png`` next to each PLY; prepared datasets: their ``caption`` / ``cond_image`` features); a scene without
one is an error naming it. 'colours' derives them from the crop's colours (``scene_colours``): 'label' = the
dominant colour (11 classes, e.g. --cond=blue); 'text' = a caption such as "a dark scene, mostly blue and some
grey"; 'image' = a preview render of the crop. 'auto' (default): colours for the built-in scenes (they carry no
caption), file for every other dataset. Captions go through a frozen host-side text backbone (``cond.text``:
'hashed_bow', hashed bag-of-words features; 'hf_local' with path=DIR: a CLIP text tower or T5 encoder saved with
transformers' save_pretrained, nothing downloads); images are centre-cropped to a square and resized to
``cond.image_size`` (--cond=view.png at sampling).
"""
import ml_collections

from configs import can3tok
from configs.common import base_config
from scene3d.core.config import parse_arg

STAGE1 = ("release", "paper", "tiny")  # configs/can3tok.py variants


def stage1_sections(arg) -> tuple[ml_collections.ConfigDict, dict]:
    """(data, tokenizer) sections of a stage-2 config on a frozen Can3Tok: the data section of
    ``configs/can3tok.py:variant=arg.stage1`` (+ runlocal, bf16), so the two stages cannot drift apart (Gaussian
    count, row order / layout, radius), and the tokenizer section (``workdir``: a configs/can3tok.py run;
    ``model``: used only without a workdir)."""
    if arg.stage1 not in STAGE1:
        raise ValueError(f"stage1={arg.stage1!r}: expected one of {STAGE1} (configs/can3tok.py variants)")
    stage1 = can3tok.get_config(f"variant={arg.stage1}" + (",runlocal" if arg.runlocal else "") +
                                (",bf16" if arg.bf16 else ""))
    data = ml_collections.ConfigDict(stage1.data.to_dict())
    tokenizer = dict(workdir=arg.tokenizer or None, step=None, use_ema=True, sample_posterior=False, scale=1.0,
                     model=stage1.model.to_dict())
    return data, tokenizer


def get_config(arg=None):
    arg = parse_arg(arg, variant="B", stage1="release", cond="text", tokenizer="", runlocal=False, bf16=False)
    c = base_config()
    c.task = "generate"

    c.data, c.tokenizer = stage1_sections(arg)
    # The generator over the (T, E) latent tokens: a set with learned positions, condition by cross-attention.
    c.model = dict(name="latent_dit", variant=arg.variant, pos="learned", qk_norm=True, attn_impl="auto", scan=True,
                   remat="none", dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.cond = dict(kind=arg.cond, source="auto", text=dict(backbone="hashed_bow", dim=64, max_words=16, path=""),
                  image_size=32, patch=8, pool="none")
    # cond.text: backbone 'hashed_bow' uses dim + max_words; 'hf_local' path (a local transformers folder) +
    # max_words (its features have the model's hidden size).
    c.flow = dict(time_sampler="logit_normal", cond_drop=0.1, sample_steps=50, sampler="heun", cfg_scale=3.0,
                  cfg_interval=(0.0, 0.8), sample_shift=1.0)
    c.render = dict(size=64)  # eval preview renders
    c.num_sample_images = 4

    c.global_batch_size = 64
    c.total_steps = 200_000
    c.optim.update(lr=1e-4, warmup_steps=2000, b2=0.99, clip_norm=1.0, weight_decay=0.0)
    c.ema_decay = 0.9999
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.eval_batch_size = 32

    if arg.runlocal:
        c.model.update(variant="tiny", width=64, depth=2, heads=2, attn_impl="xla")
        c.cond.text.update(dim=32, max_words=12)
        c.flow.update(sample_steps=16, sampler="euler")
        c.global_batch_size = 16
        c.total_steps = 400
        c.optim.update(lr=1e-3, warmup_steps=20)
        c.ema_decay = 0.99
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.log_every = 20
        c.ckpt_every = 200
        c.eval_every = 200
        c.eval_batches = 1
        c.eval_batch_size = 8
    return c
