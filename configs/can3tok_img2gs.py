"""Image to 3DGS (the Can3Tok paper's application; issue 15, item 5): an image encoder regresses the latent of a
FROZEN stage-1 Can3Tok (configs/can3tok.py), and the frozen decoder turns the prediction into Gaussians
(``scene3d.tasks.image_to_gs``).

    python -m scene3d.train --config=configs/can3tok.py:runlocal --workdir=/tmp/can3tok
    python -m scene3d.train --config=configs/can3tok_img2gs.py:runlocal,tokenizer=/tmp/can3tok --workdir=/tmp/img2gs
    python -m scene3d.evaluate --workdir=/tmp/img2gs
    python -m scene3d.sample --workdir=/tmp/img2gs --cond=view.png --out=/tmp/img2gs/sample

Args: stage1=release|paper|tiny (the configs/can3tok.py variant whose data section and tokenizer architecture the
run takes; runlocal: the stage-1 runlocal), tokenizer=STAGE1_WORKDIR (as in configs/can3tok_ldm.py; empty: a
random tokenizer, smoke tests only), variant=tiny|S|B (the image encoder's size), bf16, runlocal (CPU minutes on
the built-in scenes).

Target: the tokenizer's posterior mean of each crop times ``tokenizer.scale`` (MSE in that space). Image
(``cond.source``): 'colours' (the built-in scenes under 'auto') renders the crop itself from a fixed camera, at
``cond.image_size`` pixels; 'file' (every other dataset under 'auto') takes the dataset's conditioning image
(PLY folders: ``<stem>.png`` or ``cond.png`` next to each PLY), centre-cropped to a square and resized. Evaluation
reports the latent MSE, the decoded per-scene L2 / failure rate, and the same figures for the mean training latent
(``baseline_*``) and the tokenizer's own reconstruction (``tokenizer_*``).
"""
from configs import can3tok_ldm
from configs.common import base_config
from scene3d.core.config import parse_arg

# Image encoder sizes (ImageEncoder patch embedding + transformer blocks + pooled linear head).
VARIANTS = {"tiny": dict(width=64, depth=2, heads=2), "S": dict(width=384, depth=12, heads=6),
            "B": dict(width=768, depth=12, heads=12)}


def get_config(arg=None):
    arg = parse_arg(arg, variant="B", stage1="release", tokenizer="", runlocal=False, bf16=False)
    if arg.variant not in VARIANTS:
        raise ValueError(f"configs/can3tok_img2gs.py: variant must be one of {sorted(VARIANTS)}, got {arg.variant!r}")
    c = base_config()
    c.task = "image_to_gs"

    c.data, c.tokenizer = can3tok_ldm.stage1_sections(arg)
    c.model = dict(name="img2gs", **VARIANTS[arg.variant], patch=16, mlp_ratio=4.0, attn_impl="auto", scan=True,
                   remat="none", dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.cond = dict(source="auto", image_size=224)
    c.metrics = dict(failure_threshold=1000.0)
    c.render = dict(size=128)  # evaluation figures: [input | decoded prediction | target] per example
    c.num_sample_images = 4

    c.global_batch_size = 64
    c.total_steps = 100_000
    c.optim.update(lr=1e-4, warmup_steps=2000, clip_norm=1.0, weight_decay=0.0)
    c.ema_decay = 0.999
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.eval_batch_size = 32

    if arg.runlocal:
        c.model.update(**VARIANTS["tiny"], patch=8, attn_impl="xla")
        c.cond.update(image_size=64)
        c.render.update(size=96)
        c.global_batch_size = 16
        c.total_steps = 600
        c.optim.update(lr=1e-3, warmup_steps=20)
        c.ema_decay = 0.0
        c.mesh = dict(data=-1, fsdp=1, tensor=1)
        c.log_every = 25
        c.ckpt_every = 300
        c.eval_every = 150
        c.eval_batches = 1
        c.eval_batch_size = 8
    return c
