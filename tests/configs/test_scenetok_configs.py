"""configs/scenetok.py and configs/scenegen.py variants: views per example (RE10K-style 12 context / 8 target,
DL3DV-style 16 / 8) and the token count and dimension each variant produces (eval_shape of the real-size models and
of the encoder on a real-size batch). Two-step trains of the configs are the runlocal smoke tests in tests/tasks."""
import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

pytest.importorskip("pybullet")

from scene3d.core.config import load_config  # noqa: E402
from scene3d.tasks import scenegen as sgen  # noqa: E402
from scene3d.tasks import scenetok as stok  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
STOK = str(REPO / "configs" / "scenetok.py")
SGEN = str(REPO / "configs" / "scenegen.py")
# variant -> (context views, target views, scene tokens K, token dim d): the papers' settings.
EXPECTED = {"re10k": (12, 8, 512, 64), "dl3dv": (16, 8, 1024, 64)}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_scenetok_variant_views_and_tokens(variant):
    ctx, tgt, k, d = EXPECTED[variant]
    c = load_config(f"{STOK}:variant={variant}")
    assert (c.data.views.num_context, c.data.views.num_target) == (ctx, tgt)
    assert c.data.views.window[0] >= ctx + tgt - 1  # the frame window can hold every view without repeats
    task = stok.SceneTokTask(c)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    h, w = c.data.views.resolution
    images = jax.ShapeDtypeStruct((1, ctx, h, w, 3), jnp.float32)
    c2w = jax.ShapeDtypeStruct((1, ctx, 4, 4), jnp.float32)
    intr = jax.ShapeDtypeStruct((1, ctx, 4), jnp.float32)
    tokens = jax.eval_shape(lambda m, *a: m.tokens(*a)[0], model, images, c2w, intr)
    assert tokens.shape == (1, k, d)
    # VA-VAE f16c32 latents of 256 px views: a 16 x 16 x 32 grid
    assert task.latent_grid == (16, 16) and task.latent_channels == 32


@pytest.mark.parametrize("data", sorted(EXPECTED))
def test_scenegen_data_variant_follows_stage1(data):
    ctx, tgt, k, d = EXPECTED[data]
    c = load_config(f"{SGEN}:data={data}")
    assert (c.data.views.num_context, c.data.views.num_target) == (ctx, tgt)
    task = sgen.SceneGenTask(c)
    gen = nnx.eval_shape(lambda: task.build_generator(nnx.Rngs(0)))
    assert (gen.num_tokens, gen.token_dim) == (k, d)
    with pytest.raises(ValueError, match="data must be 're10k' or 'dl3dv'"):
        load_config(f"{SGEN}:data=co3d")
