"""configs/can3tok.py: variants, the recipe fields, and the 'release' / 'paper' models as abstract shapes with
their parameter shardings on a (2 data x 4 fsdp) mesh (nothing allocated)."""
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.core import sharding as sh
from scene3d.core.config import load_config
from scene3d.tasks.autoencode import AutoencodeTask

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "can3tok.py")
# ../shared/fixtures/can3tok/README.txt: the released model has 1,081,548,993 parameters, 1.8 M of them in an
# unused geo_decoder that we do not build.
RELEASE_PARAMS, UNUSED_GEO_DECODER = 1_081_548_993, 1.8e6


def test_variants_and_recipe():
    rel, paper, rl = (load_config(f"{CONFIG}:{a}") for a in ("variant=release", "variant=paper", "runlocal"))
    assert rel.task == paper.task == rl.task == "autoencode"
    assert rel.loss.beta == 1e-5 and paper.loss.beta == 1e-6  # release script vs paper text
    assert rel.model.variant == "release" and paper.model.variant == "paper" and rl.model.variant == "tiny"
    for c in (rel, paper, rl):
        assert c.model.num_gaussians == c.data.gaussians.num_gaussians
        assert c.model.point_feats == 11 and c.model.gs_channels == 14
        assert c.optim.clip_norm > 0
        AutoencodeTask(c)  # the task accepts every variant
    for c in (paper, rl):  # our recipe: MSE, annealed KL, a canonical row order (a row-wise loss needs one)
        assert c.loss.recon == "mse" and c.loss.kl_anneal_steps > 0 and c.data.gaussians.order != "none"
    # the public code's recipe (issue 15): its L2-batch loss, constant KL weight, radius 10, rows in file order
    assert rel.loss.recon == "l2_batch" and rel.loss.kl_anneal_steps == 0 and rel.data.gaussians.radius == 10.0
    assert rel.data.gaussians.order == "none" and not rel.data.gaussians.rotate
    for c in (rel, paper):  # the release's 18-channel voxel rows, posterior sampled from step 0
        assert c.data.gaussians.rows == "release18" and c.model.input_offset == 4
        assert c.loss.posterior_warmup_steps == 0
    assert paper.data.gaussians.order == "voxel" and paper.data.gaussians.rotate
    assert rl.data.gaussians.rows == "raw" and rl.model.input_offset == 0 and rl.data.gaussians.order == "kdtree"
    assert rl.loss.posterior_warmup_steps > 0
    assert rel.optim.lr == 1e-4 and rel.optim.schedule == "constant" and rel.optim.weight_decay == 0.0
    assert rel.data.gaussians.num_gaussians == 40_000 and rl.data.name == "tabletop"
    assert rl.data.num_eval > 0 and rl.eval_every > 0 and rl.total_steps <= 3000
    with pytest.raises(ValueError, match="variant must be one of"):
        load_config(f"{CONFIG}:variant=huge")


def test_bf16_computes_in_bfloat16_with_float32_params():
    c = load_config(f"{CONFIG}:runlocal,bf16")
    assert c.model.dtype == "bfloat16" and c.model.param_dtype == "float32"
    for k, v in {"num_gaussians": 16, "width": 32, "head_width": 16}.items():
        c.model[k] = v
    c.data.gaussians.num_gaussians = 16
    task = AutoencodeTask(c)
    model = task.build_model(nnx.Rngs(0))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    rows = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 14)), jnp.float32)
    recon, aux = nnx.jit(lambda m, x: m(x, sample_posterior=False))(model, rows)
    assert aux["tokens"].dtype == jnp.bfloat16 and aux["decoder_tokens"].dtype == jnp.bfloat16
    assert recon.dtype == jnp.float32 and recon.shape == (2, 16, 14)


@pytest.mark.parametrize("variant", ["release", "paper"])
def test_large_variants_shapes_and_shardings(variant):
    c = load_config(f"{CONFIG}:variant={variant}")
    task = AutoencodeTask(c)
    params = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))), nnx.Param)
    mesh = sh.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    shardings = sh.state_shardings(params, mesh, sh.rules_from_config(c.sharding.rules))
    total = per_device = 0
    for (path, var), (_, s) in zip(nnx.to_flat_state(params), nnx.to_flat_state(shardings)):
        shape, sharding = var.get_value().shape, s.get_value()
        total += math.prod(shape)
        per_device += math.prod(sharding.shard_shape(shape))
        if math.prod(shape) >= 4 * 2**20:  # every big parameter is split over the 4 fsdp devices
            assert "fsdp" in jax.tree.leaves(tuple(sharding.spec)), (path, shape, sharding.spec)
    head = dict(nnx.to_flat_state(params))[("head_out", "kernel")].get_value().shape
    assert head == (1024, 40_000 * 14)
    if variant == "release":
        assert abs(total - (RELEASE_PARAMS - UNUSED_GEO_DECODER)) < 0.1e6, total
    else:  # wider and deeper than the release (width 768, 8 + 16 blocks, voxel anchors)
        assert total > 1.3e9
    assert per_device < total / 4 * 1.01  # parameters fully sharded over fsdp (replicated over data)
