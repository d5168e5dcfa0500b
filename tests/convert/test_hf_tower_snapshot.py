"""Real tower weights the way a user loads them: a tiny random DINOv2 / SigLIP2 written by transformers'
``save_pretrained`` (the layout of a downloaded Hugging Face snapshot) is named by ``config.model.encoder_weights``
of a configs/rae3d.py config; the rae3d task builds the 3DRAE and ``restore_pretrained`` (what scene3d.train calls)
fills its frozen tower. The encoder's tower features must equal the transformers model's last hidden states on the
same images (independent reference: transformers in PyTorch)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx

from scene3d.convert import hf_vit
from scene3d.core.config import load_config
from scene3d.models import vit
from scene3d.tasks.rae3d import RAE3DTask

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def _randomize(model, seed):
    """Random weights of a realistic scale (norms and layer scales near 1) so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "position_embedding" in name or "cls_token" in name:
                p.copy_(r)
            elif p.ndim == 1 and ("norm" in name or "lambda1" in name):
                p.copy_(1.0 + 0.3 * r)
            else:
                p.copy_((0.2 if p.ndim > 1 else 0.3) * r)
    return model.eval()


def _dinov2():
    return T.Dinov2Model(T.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=14,
                                        image_size=42))


def _siglip2_vision():
    return T.Siglip2VisionModel(T.Siglip2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                      num_attention_heads=4, patch_size=16, num_patches=16))


def _siglip2_full():
    """A whole Siglip2Model (text + vision), as google/siglip2-* snapshots hold: the text tower is ignored."""
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=16)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, patch_size=16,
                  num_patches=16)
    return T.Siglip2Model(T.Siglip2Config(text_config=text, vision_config=vision))


def _hf_features(hf, images01: np.ndarray, family: str, patch: int) -> np.ndarray:
    """transformers forward on images in [0, 1] (B, H, W, 3) normalised as its image processor does -> patch
    tokens (B, h * w, D) of the last hidden state."""
    mean, std = vit.IMAGE_MEAN_STD[family]
    x = torch.from_numpy(((images01 - np.array(mean)) / np.array(std)).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        if family != "siglip2":
            return hf(x).last_hidden_state[:, 1:].numpy()
        b, _, h, w = x.shape
        gh, gw = h // patch, w // patch
        patches = x.reshape(b, 3, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, -1)
        tower = hf.vision_model if isinstance(hf, T.Siglip2Model) else hf
        return tower(patches, pixel_attention_mask=torch.ones(b, gh * gw, dtype=torch.int32),
                     spatial_shapes=torch.tensor([[gh, gw]] * b)).last_hidden_state.numpy()


CASES = {  # name: (HF builder, config arg, tower variant, family, patch)
    "dinov2": (_dinov2, "runlocal", "tiny-dinov2", "dinov2", 14),
    "siglip2_vision": (_siglip2_vision, "card=siglip2,runlocal", "tiny-siglip2", "siglip2", 16),
    "siglip2_full": (_siglip2_full, "card=siglip2,runlocal", "tiny-siglip2", "siglip2", 16),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_tower_from_save_pretrained_folder_matches_transformers(name, tmp_path):
    make, arg, variant, family, patch = CASES[name]
    torch.manual_seed(0)
    hf = _randomize(make(), 3)
    folder = tmp_path / "snapshot"
    hf.save_pretrained(folder)
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    config = load_config(f"{REPO}/configs/rae3d.py:{arg}")
    assert config.model.encoder == variant
    config.model.update(encoder_weights=str(folder), num_tokens=4, dim=32, dec_dim=32, dec_depth=1)
    task = RAE3DTask(config)
    model = task.build_model(nnx.Rngs(0))
    graphdef, variables = nnx.split(model)
    random_tower = np.asarray(jax.tree.leaves(variables["encoder"]["vit"])[0]).copy()
    variables = task.restore_pretrained(variables)
    model = nnx.merge(graphdef, variables)
    assert not np.array_equal(np.asarray(jax.tree.leaves(variables["encoder"]["vit"])[0]), random_tower)

    rng = np.random.default_rng(1)
    for h, w in ((3 * patch, 3 * patch), (2 * patch, 4 * patch)):  # native grid (tiny-dinov2) and another size
        im01 = rng.uniform(0, 1, (2, h, w, 3))
        got = nnx.jit(lambda m, x: m.encoder.features(x))(model, jnp.asarray(im01 * 2 - 1, jnp.float32))
        want = _hf_features(hf, im01, family, patch)
        assert got.shape == (2, h // patch, w // patch, 64)
        np.testing.assert_allclose(np.asarray(got).reshape(2, -1, 64), want, atol=1e-4, rtol=1e-4)


def test_snapshot_config_mismatch_and_missing_path_name_the_file(tmp_path):
    hf = _randomize(_dinov2(), 3)
    hf.save_pretrained(tmp_path / "dino")
    config = load_config(f"{REPO}/configs/rae3d.py:card=siglip2,runlocal")  # a SigLIP2 tower, DINOv2 weights
    config.model.update(encoder_weights=str(tmp_path / "dino"), num_tokens=4, dim=32, dec_dim=32, dec_depth=1)
    task = RAE3DTask(config)
    variables = nnx.state(task.build_model(nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"dino/config\.json.*family='dinov2'"):
        task.restore_pretrained(variables)
    # sizes that differ (depth) are named with the variant's value
    cfg = json.loads((tmp_path / "dino" / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "dino" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"num_hidden_layers=3 \(the tower 'tiny-dinov2' has 2\)"):
        hf_vit.check_hf_config(tmp_path / "dino", "tiny-dinov2")
    config.model.encoder_weights = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        RAE3DTask(config).restore_pretrained(variables)
