"""Flow matching on the procedural shapes images: the task that proves the trainer end to end.

    python -m scene3d.train --config=configs/flow_shapes.py:runlocal --workdir=/tmp/flow_shapes
    python -m scene3d.train --config=configs/flow_shapes.py:variant=B,res=64 --workdir=gs://...

Variants: variant=tiny|S|B|L (LatentDiT size), res (image size), runlocal (CPU-minutes size).
"""
from configs.common import base_config
from scene3d.core.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, variant="S", res=32, runlocal=False, bf16=False)
    c = base_config()
    c.task = "generate"

    c.data = dict(name="shapes", size=arg.res, num_train=200_000, num_eval=1024, seed=0)
    c.model = dict(name="latent_dit", variant=arg.variant, patch=4, num_classes=6, pos="rope2d", qk_norm=True,
                   attn_impl="auto", scan=True, remat="none",
                   dtype="bfloat16" if arg.bf16 else "float32", param_dtype="float32")
    c.flow = dict(time_sampler="logit_normal", cond_drop=0.1, sample_steps=32, sampler="euler",
                  cfg_scale=2.0, cfg_interval=(0.1, 0.9), sample_shift=1.0)

    c.global_batch_size = 256
    c.total_steps = 100_000
    c.optim.update(lr=3e-4, warmup_steps=2000, b2=0.99, clip_norm=1.0, skip_grad_norm=100.0)
    c.ema_decay = 0.9999

    c.num_sample_images = 36

    if arg.runlocal:
        c.data.size = 16
        c.data.num_train = 20_000
        c.data.num_eval = 128
        c.model.update(variant="tiny", width=96, depth=3, heads=2, patch=2, attn_impl="xla")
        c.global_batch_size = 32
        c.total_steps = 600
        c.optim.update(lr=2e-3, warmup_steps=50)
        c.ema_decay = 0.99
        c.log_every = 50
        c.ckpt_every = 200
        c.eval_every = 300
        c.eval_batches = 2
        c.eval_batch_size = 64
        c.num_sample_images = 36
        c.flow.sample_steps = 16
    return c
