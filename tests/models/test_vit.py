"""ViT (DINOv2, DINOv2 + registers, SigLIP2) vs transformers 5.23 PyTorch models with random weights.

Tolerance: float32, atol 1e-4 + rtol 1e-4 on features of magnitude ~1-10 (observed max error ~3e-6).
Position-embedding resizing is also checked against ``torch.nn.functional.interpolate`` directly.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from flax import nnx

from scene3d.convert import hf_vit as convert_hf
from scene3d.core import sharding
from scene3d.models.vit import VARIANTS, ViT, freeze, interpolate_weights, preprocess, torch_interpolate

TOL = dict(atol=1e-4, rtol=1e-4)
DIM = 64


def test_transformers_version_pinned():
    assert T.__version__ == convert_hf.HF_TRANSFORMERS_VERSION


# ---------------------------------------------------------------------------------------------------------
# Interpolation vs torch


SIZES = [((4, 4), (2, 3)), ((5, 5), (3, 7)), ((6, 6), (25, 4)), ((16, 16), (16, 16)), ((7, 7), (1, 1)),
         ((3, 3), (1, 5)), ((37, 37), (16, 16)), ((4, 4), (8, 6))]  # down, up, mixed, identity, to 1, odd


def _torch_resize(x, size, mode, antialias):
    return F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode=mode, align_corners=False,
                         antialias=antialias).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("mode,antialias", [("bicubic", False), ("bicubic", True), ("bilinear", True)])
def test_interpolate_weights_match_torch(mode, antialias):
    rng = np.random.default_rng(0)
    for (hi, wi), (ho, wo) in SIZES:
        x = rng.standard_normal((2, hi, wi, 5)).astype(np.float32)
        out = np.einsum("oh,bhwc,pw->bopc", interpolate_weights(hi, ho, mode, antialias), x.astype(np.float64),
                        interpolate_weights(wi, wo, mode, antialias))
        np.testing.assert_allclose(out, _torch_resize(x, (ho, wo), mode, antialias), atol=1e-5, rtol=1e-5,
                                   err_msg=f"{mode} aa={antialias} {(hi, wi)}->{(ho, wo)}")
    # the jax entry point on a non-square down/up resize
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(torch_interpolate(jnp.asarray(x), (7, 2), mode, antialias),
                               _torch_resize(x, (7, 2), mode, antialias), atol=1e-5, rtol=1e-5)


def test_interpolate_weights_errors():
    with pytest.raises(ValueError, match="bicubic"):
        interpolate_weights(4, 2, "bilinear", antialias=False)
    with pytest.raises(ValueError, match="mode"):
        interpolate_weights(4, 2, "nearest", antialias=True)


# ---------------------------------------------------------------------------------------------------------
# Reference models


def _randomize(model: torch.nn.Module, seed: int):
    """Random weights of a realistic scale; norms and layer scales around 1, position embeddings O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "position_embedding" in name or "register_tokens" in name or "cls_token" in name:
                p.copy_(r)
            elif p.ndim == 1 and ("norm" in name or "lambda1" in name):
                p.copy_(1.0 + 0.3 * r)
            else:
                p.copy_((0.2 if p.ndim > 1 else 0.3) * r)


def _dinov2_cfg():
    return T.Dinov2Config(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, patch_size=14, image_size=42)


def _dinov2_reg_cfg():
    return T.Dinov2WithRegistersConfig(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, patch_size=14,
                                       image_size=42, num_register_tokens=4)


def _siglip2_cfg():
    return T.Siglip2VisionConfig(hidden_size=DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 patch_size=16, num_patches=16)


CASES = {
    # variant: (HF model class, config, sizes: native first, then other resolutions / aspect ratios)
    "tiny-dinov2": (T.Dinov2Model, _dinov2_cfg, [(42, 42), (28, 42), (56, 28)]),
    "tiny-dinov2reg": (T.Dinov2WithRegistersModel, _dinov2_reg_cfg, [(42, 42), (28, 42), (56, 28)]),
    "tiny-siglip2": (T.Siglip2VisionModel, _siglip2_cfg, [(64, 64), (32, 48), (80, 32)]),
}


@pytest.fixture(scope="module")
def hf_models():
    """variant -> HF PyTorch model with random weights (built lazily, once per module)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            cls, cfg, _ = CASES[variant]
            torch.manual_seed(0)
            cache[variant] = cls(cfg()).eval()
            _randomize(cache[variant], 1)
        return cache[variant]

    return get


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, hf_models):
    """(variant, HF model, converted ViT, report); the ViT is built abstractly and filled from the HF weights."""
    variant = request.param
    hf = hf_models(variant)
    vit, report = convert_hf.load_vit(variant, hf.state_dict())
    return variant, hf, vit, report


def _hf_forward(hf, x: np.ndarray, family: str):
    """HF forward on channels-last images x (B, H, W, 3); SigLIP2 gets NaFlex patches with no padding."""
    pix = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        if family != "siglip2":
            return hf(pix, output_hidden_states=True)
        b, h, w, _ = x.shape
        p = hf.config.patch_size
        gh, gw = h // p, w // p
        # Siglip2ImageProcessor's convert_image_to_patches: (C, H, W) -> (gh * gw, p * p * C), features (py, px, c)
        patches = pix.reshape(b, 3, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, -1)
        return hf(patches, pixel_attention_mask=torch.ones(b, gh * gw, dtype=torch.int32),
                  spatial_shapes=torch.tensor([[gh, gw]] * b), output_hidden_states=True)


def test_hf_parity(pair):
    variant, hf, vit, report = pair
    assert not report["ignored"] and not report["defaulted"]
    fam, cfg = vit.family, vit.config
    graphdef, state = nnx.split(vit)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, return_hidden_states=True))
    for k, (h, w) in enumerate(CASES[variant][2]):
        x = np.random.default_rng(10 + k).standard_normal((2, h, w, 3)).astype(np.float32)
        ref = _hf_forward(hf, x, fam)
        feats, aux = fwd(state, jnp.asarray(x))
        last = ref.last_hidden_state.numpy()
        n = cfg.num_prefix
        assert feats.shape == (2, h // cfg.patch, w // cfg.patch, DIM)
        np.testing.assert_allclose(np.asarray(feats).reshape(2, -1, DIM), last[:, n:], **TOL,
                                   err_msg=f"{variant} {h}x{w}")
        if fam == "siglip2":
            assert aux["cls"] is None and aux["registers"] is None
        else:
            np.testing.assert_allclose(aux["cls"], last[:, 0], **TOL)
            if fam == "dinov2_reg":
                np.testing.assert_allclose(aux["registers"], last[:, 1:n], **TOL)
            else:
                assert aux["registers"] is None
        np.testing.assert_allclose(aux["pooled"], ref.pooler_output.numpy(), **TOL)
        hs = np.stack([t.numpy() for t in ref.hidden_states])  # embeddings + each layer, before the final norm
        assert aux["hidden_states"].shape == hs.shape
        np.testing.assert_allclose(aux["hidden_states"], hs, **TOL)


def test_export_round_trip(pair):
    variant, hf, vit, _ = pair
    sd = convert_hf.to_hf_state_dict(vit)
    ref = hf.state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)
    # The exported dict loads strictly into a fresh HF model.
    fresh = type(hf)(hf.config)
    fresh.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)


def test_import_prefix_and_legacy_names():
    """A Dinov2ForImageClassification checkpoint with the hub's pre-5.0 attention names imports the same."""
    torch.manual_seed(0)
    hf = T.Dinov2Model(_dinov2_cfg()).eval()
    _randomize(hf, 3)
    legacy = {}
    for k, v in hf.state_dict().items():
        k = k.replace("attention.q_proj", "attention.attention.query").replace(
            "attention.k_proj", "attention.attention.key").replace("attention.v_proj", "attention.attention.value")
        k = k.replace("attention.o_proj", "attention.output.dense")
        legacy["dinov2." + k] = v
    legacy["classifier.weight"] = torch.zeros(10, 2 * DIM)
    abstract = nnx.eval_shape(lambda: ViT("tiny-dinov2", rngs=nnx.Rngs(0)))
    state, report = convert_hf.from_hf_state_dict(abstract, legacy, "dinov2")
    assert report["prefix"] == "dinov2." and report["ignored"] == ["classifier.weight"]
    assert report["renamed_legacy"] == 4 * 2 * 2  # q/k/v/o x weight/bias x 2 layers
    direct, _ = convert_hf.from_hf_state_dict(abstract, hf.state_dict(), "dinov2")
    jax.tree.map(np.testing.assert_array_equal, state, direct)


def test_import_errors_name_keys_and_shapes():
    hf = T.Siglip2VisionModel(_siglip2_cfg())
    sd = dict(hf.state_dict())
    abstract = nnx.eval_shape(lambda: ViT("tiny-siglip2", rngs=nnx.Rngs(0)))
    del sd["encoder.layers.1.mlp.fc1.bias"]
    sd["head.probe"] = torch.zeros(1, 1, DIM + 1)
    with pytest.raises(ValueError) as e:
        convert_hf.from_hf_state_dict(abstract, sd, "siglip2")
    msg = str(e.value)
    assert "encoder.layers.1.mlp.fc1.bias (expected shape (128,))" in msg
    assert "head.probe: expected (1, 1, 64), got (1, 1, 65)" in msg
    dino = T.Dinov2Model(_dinov2_cfg()).state_dict()
    with pytest.raises(ValueError, match="not a 'siglip2' vision tower"):
        convert_hf.from_hf_state_dict(abstract, dino, "siglip2")
    with pytest.raises(ValueError, match="the model is a 'siglip2' ViT"):
        convert_hf.from_hf_state_dict(abstract, dino, "dinov2")
    with pytest.raises(ValueError, match="family="):
        convert_hf.from_hf_state_dict(nnx.state(abstract), sd)


@pytest.mark.parametrize("variant,make", [
    ("dinov2-B", lambda: T.Dinov2Model(T.Dinov2Config(image_size=518, patch_size=14))),
    ("dinov2reg-B", lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(image_size=518, patch_size=14))),
    ("siglip2-B", lambda: T.Siglip2VisionModel(T.Siglip2VisionConfig())),
])
def test_full_size_key_sets_match_hf(variant, make):
    """Abstract full-size towers against HF models built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        hf = make()
    ref = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    abstract = nnx.eval_shape(lambda: ViT(variant, rngs=nnx.Rngs(0)))
    assert convert_hf.hf_key_shapes(abstract) == ref
    assert abstract.config.native_size == (518 if "dinov2" in variant else 256)


def test_variant_table():
    b = VARIANTS["dinov2-B"]
    assert (b["dim"], b["depth"], b["num_heads"], b["patch"], b["pos_grid"] * b["patch"]) == (768, 12, 12, 14, 518)
    assert VARIANTS["siglip2-B"]["patch"] == 16 and VARIANTS["siglip2-B"]["dim"] == 768
    with pytest.raises(ValueError, match="unknown variant"):
        ViT("dinov2-XXL", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="registers"):
        ViT("tiny-dinov2", num_registers=2, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------------
# Preprocessing, input checks, freezing, sharding


def test_preprocess_matches_hf_normalisation():
    img = np.random.default_rng(0).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    c = T.utils.constants
    for family, mean, std in (("dinov2", c.IMAGENET_DEFAULT_MEAN, c.IMAGENET_DEFAULT_STD),
                              ("siglip2", c.IMAGENET_STANDARD_MEAN, c.IMAGENET_STANDARD_STD)):
        ref = (img.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
        np.testing.assert_allclose(preprocess(img, family), ref, atol=1e-5)
        # float images in [-1, 1] -> same result as the uint8 image they came from
        np.testing.assert_allclose(preprocess(img.astype(np.float32) / 127.5 - 1.0, family), ref, atol=1e-5)
    with pytest.raises(ValueError, match="family"):
        preprocess(img, "clip")


def test_bad_image_shapes_raise():
    vit = nnx.eval_shape(lambda: ViT("tiny-dinov2", rngs=nnx.Rngs(0)))  # shapes are checked before any compute
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        vit(jnp.zeros((1, 28, 30, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        vit(jnp.zeros((28, 28, 3)))


class _Probe(nnx.Module):
    """A task-like model: a frozen tower and a trainable linear probe on its pooled features."""

    def __init__(self, tower, rngs):
        self.tower = freeze(tower)
        self.head = nnx.Linear(DIM, 3, rngs=rngs)

    def __call__(self, x):
        feats, aux = self.tower(x)
        return self.head(feats.mean((1, 2)) + aux["cls"])


def test_freeze_excludes_tower_from_params_and_gradients(hf_models):
    tower, _ = convert_hf.load_vit("tiny-dinov2", hf_models("tiny-dinov2").state_dict())
    model = _Probe(tower, nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert set(params.keys()) == {"head"}
    frozen = jax.tree.leaves(nnx.state(model.tower), is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert frozen and not any(isinstance(v, nnx.Param) for v in frozen)
    # Converting a frozen tower keeps its variable types.
    state, _ = convert_hf.from_hf_state_dict(model.tower, convert_hf.to_hf_state_dict(model.tower))
    assert {type(v).__name__ for v in jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable))} == \
        {"Frozen"}
    # No gradient reaches the tower (stop_gradient at its outputs), the probe gets one.
    graphdef, st = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 28, 28, 3)), jnp.float32)
    grads = jax.jit(jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x) ** 2)))(st)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["tower"]))
    assert float(jnp.abs(grads["head"]["kernel"][...]).max()) > 0


def test_sharded_forward_matches_hf(hf_models):
    """Parameters placed by their logical names on a (data, fsdp, tensor) = (2, 2, 2) mesh; output vs HF."""
    hf = hf_models("tiny-dinov2reg")
    vit, _ = convert_hf.load_vit("tiny-dinov2reg", hf.state_dict())
    mesh = sharding.make_mesh((2, 2, 2))
    graphdef, state = nnx.split(vit)
    state = jax.device_put(state, sharding.state_shardings(state, mesh))
    assert any(len(v.get_value().sharding.device_set) == 8 and not v.get_value().sharding.is_fully_replicated
               for v in jax.tree.leaves(state, is_leaf=lambda v: isinstance(v, nnx.Variable)))
    x = np.random.default_rng(0).standard_normal((4, 28, 42, 3)).astype(np.float32)
    with sharding.use_mesh(mesh):
        feats, aux = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(
            state, jax.device_put(jnp.asarray(x), sharding.batch_sharding(4, mesh)))
    ref = _hf_forward(hf, x, "dinov2_reg").last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(feats).reshape(4, -1, DIM), ref[:, 5:], **TOL)
    np.testing.assert_allclose(aux["registers"], ref[:, 1:5], **TOL)


@pytest.mark.parametrize("variant", ["tiny-dinov2", "tiny-siglip2"])
def test_load_vit_from_save_pretrained_folder(variant, hf_models, tmp_path):
    """``save_pretrained`` output (safetensors, whatever key layout transformers writes) loads like the state_dict."""
    hf = hf_models(variant)
    hf.save_pretrained(tmp_path)
    vit, report = convert_hf.load_vit(variant, tmp_path)
    direct, _ = convert_hf.load_vit(variant, hf.state_dict())
    jax.tree.map(np.testing.assert_array_equal, nnx.state(vit), nnx.state(direct))
    assert not report["defaulted"]
