"""The released 3DRAE variants (configs/rae3d.py:card=dino2|dino2-256|siglip2), built abstractly (nnx.eval_shape:
nothing allocated): K tokens at the tower's width 768, the encoder / decoder shapes at the card's resolution, the
tower sizes against transformers' own ViT-B configs (built on the meta device), and the runlocal shrink."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import rae3d as rae3d_config
from scene3d.tasks.rae3d import RAE3DTask

CARDS = {"dino2": (1024, 224, "dinov2-B"), "dino2-256": (256, 224, "dinov2-B"), "siglip2": (256, 256, "siglip2-B")}


def _sds(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("card", sorted(CARDS))
def test_card_shapes_abstract(card):
    k, res, tower = CARDS[card]
    c = rae3d_config.get_config(f"card={card}")
    assert (c.model.encoder, c.model.num_tokens, c.model.latent_dim) == (tower, k, 768)
    assert tuple(c.data.views.resolution) == (res, res)
    # the recipe is on: noise-augmented decoding, LPIPS (weights from files), the delayed adaptive GAN, view counts
    assert c.loss.token_noise > 0 and c.loss.lpips > 0 and c.loss.adv > 0
    assert 0 < c.loss.disc_start <= c.loss.adv_start < c.total_steps
    assert tuple(c.loss.context_views) == (2, c.data.views.num_context)
    task = RAE3DTask(c)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    assert model.latent_shape == (k, 768)
    assert model.encoder.vit.config.dim == 768 and model.decoder.cfg.dec_dim >= 768
    graphdef, state = nnx.split(model)
    b, v, t = 1, 3, 2
    c2w, intr = _sds((b, v, 4, 4)), _sds((b, v, 4))
    tokens = jax.eval_shape(lambda s, im, cw, kk, vm: nnx.merge(graphdef, s).encode(im, cw, kk, view_mask=vm), state,
                            _sds((b, v, res, res, 3)), c2w, intr, _sds((b, v), jnp.bool_))
    assert tokens.shape == (b, k, 768)
    out = jax.eval_shape(lambda s, tok, cw, kk: nnx.merge(graphdef, s).decode(tok, cw, kk, (res, res)), state, tokens,
                         _sds((b, t, 4, 4)), _sds((b, t, 4)))
    assert out["rgb"].shape == (b, t, res, res, 3) and out["depth"].shape == (b, t, res, res)
    # the discriminator heads read the frozen tower's 768 channels
    assert model.discriminator.channels == (768,)


def test_card_towers_match_transformers_base_configs():
    """The card towers have the parameter count of transformers' ViT-B DINOv2 / SigLIP2 vision models."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from scene3d.convert import hf_vit
    with torch.device("meta"):
        refs = {"dinov2-B": transformers.Dinov2Model(transformers.Dinov2Config(image_size=518)),
                "siglip2-B": transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(num_patches=256))}
    for card, (_, _, tower) in CARDS.items():
        model = nnx.eval_shape(lambda: RAE3DTask(rae3d_config.get_config(f"card={card}")).build_model(nnx.Rngs(0)))
        shapes = hf_vit.hf_key_shapes(model.encoder.vit)
        want = {n: tuple(p.shape) for n, p in refs[tower].state_dict().items()}
        assert {k: v for k, v in shapes.items() if k in want} == want, card
        assert set(shapes) - set(want) <= {"embeddings.mask_token"}


def test_card_args_and_runlocal():
    with pytest.raises(ValueError, match="card must be one of"):
        rae3d_config.get_config("card=dino3")
    with pytest.raises(ValueError, match="tokens=1024"):
        rae3d_config.get_config("card=dino2,tokens=256")
    # the existing args keep their meaning; no recipe unless asked for
    c = rae3d_config.get_config("encoder=siglip2-B,tokens=1024")
    assert (c.model.encoder, c.model.num_tokens, c.loss.adv, c.loss.token_noise) == ("siglip2-B", 1024, 0.0, 0.0)
    assert "latent_dim" not in c.model
    # runlocal with a card: the tiny tower of the same family, tokens at its width, cheap recipe parts only
    for card, tower in (("dino2", "tiny-dinov2"), ("siglip2", "tiny-siglip2")):
        c = rae3d_config.get_config(f"card={card},runlocal")
        assert (c.model.encoder, c.model.latent_dim, c.loss.lpips, c.loss.disc_features) == (tower, 64, 0.0,
                                                                                              "random_conv")
        model = nnx.eval_shape(lambda: RAE3DTask(c).build_model(nnx.Rngs(0)))
        assert model.latent_shape == (64, 64)
    assert np.isclose(rae3d_config.get_config("runlocal").loss.adv, 0.0)
