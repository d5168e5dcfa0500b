"""Latent diffusion on Can3Tok latents (issue 4, item 6): a LatentDiT trained by flow matching on the latents of a
FROZEN stage-1 Can3Tok (configs/can3tok.py), conditioned on a class label, a caption or a rendered view, with
classifier-free guidance.

    python -m scene3d.train --config=configs/can3tok.py:runlocal --workdir=/tmp/can3tok
    python -m scene3d.train --config=configs/can3tok_ldm.py:runlocal,tokenizer=/tmp/can3tok --workdir=/tmp/ldm
    python -m scene3d.sample --workdir=/tmp/ldm --num=4 --cond="a bright scene, mostly white" --out=/tmp/ldm/samples

Args: variant=tiny|S|B|L|XL (LatentDiT size), cond=label|text|image|none, tokenizer=STAGE1_WORKDIR (its
config.json gives the architecture, its checkpoint the weights (EMA if kept); empty: a randomly initialised
tokenizer of ``tokenizer.model``, for smoke tests only), bf16, runlocal (CPU-minutes size on the built-in scenes).

Latent: the posterior mean of z (``tokenizer.sample_posterior=False``) viewed as the decoder's (T, E) tokens, times
``tokenizer.scale``. Set the scale so that the latents have unit variance: the train metrics report
``latent_std`` (of z) and ``suggested_scale`` = 1 / latent_std from the first step on.

Conditions (the built-in scenes carry no object list or caption, so they are derived from each crop's colours,
see ``scene3d.tasks.generate.scene_colours``): 'label' = the dominant colour (11 classes, e.g. --cond=blue);
'text' = a caption such as "a dark scene, mostly blue and some grey" through a frozen text backbone ('hashed_bow':
hashed bag-of-words features; 'hf_local' with path=... for a local transformers text encoder); 'image' = a preview
render of the crop (--cond=view.png at sampling).
"""
import ml_collections

from configs import can3tok
from configs.common import base_config
from scene3d.core.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="B", cond="text", tokenizer="", runlocal=False, bf16=False)
    c = base_config()
    c.task = "generate"

    # Data and the frozen stage-1 tokenizer come from the stage-1 config, so the two stages cannot drift apart
    # (Gaussian count, row order / layout, model sizes).
    stage1 = can3tok.get_config("variant=release" + (",runlocal" if arg.runlocal else "") + (",bf16" if arg.bf16 else ""))
    c.data = ml_collections.ConfigDict(stage1.data.to_dict())
    # The frozen stage-1 tokenizer. workdir: a configs/can3tok.py run; model: used only without a workdir.
    c.tokenizer = dict(workdir=arg.tokenizer or None, step=None, use_ema=True, sample_posterior=False, scale=1.0,
                       model=stage1.model.to_dict())
    # The generator over the (T, E) latent tokens: a set with learned positions, condition by cross-attention.
    c.model = dict(name="latent_dit", variant=arg.variant, pos="learned", qk_norm=True, attn_impl="auto", scan=True,
                   remat="none", dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.cond = dict(kind=arg.cond, text=dict(backbone="hashed_bow", dim=64, max_words=16), image_size=32, patch=8,
                  pool="none")
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
