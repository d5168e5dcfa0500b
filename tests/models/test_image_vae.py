"""ImageVAE vs an independent PyTorch re-implementation of the LDM/VA-VAE AutoencoderKL layout (random weights),
the f16c32 key set, latent normalisation, a tiny variant that trains, and PixelLatent."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F
from flax import nnx

from scene3d.convert import image_vae as cv
from scene3d.models.image_vae import ImageVAE, get_image_compressor

RTOL = ATOL = 1e-4
LR = 0.02


def randomized(abstract, seed=0):
    """Fill an abstract module's params from numpy (no initialiser compiled: fast on a busy CPU)."""
    graphdef, params = nnx.split(abstract)
    r = np.random.default_rng(seed)

    def fill(path, x):
        n = r.standard_normal(x.shape).astype(np.float32)
        if path[-1].key == "kernel":
            return jnp.asarray(n / np.sqrt(np.prod(x.shape[:-1])))
        return jnp.asarray(1.0 + 0.1 * n if path[-1].key == "scale" else 0.1 * n)

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(params))
    nnx.replace_by_pure_dict(params, pure)
    return nnx.merge(graphdef, params)


@nnx.jit
def moments(model, x):
    return model.moments(x)


@nnx.jit
def decode(model, z):
    return model.decode(z)


# ------------------------------------------------------------------ the PyTorch layout (LDM / taming AutoencoderKL)


def _gn(c):
    return tnn.GroupNorm(32, c, eps=1e-6, affine=True)


class TResnetBlock(tnn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), tnn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = _gn(cout), tnn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = tnn.Conv2d(cin, cout, 1)
        self.cin, self.cout = cin, cout

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.cin != self.cout else x) + h


class TAttnBlock(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (tnn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
        w = torch.softmax(torch.bmm(q, k.reshape(b, c, hh * ww)) * c ** -0.5, dim=2)
        out = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class TDown(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = tnn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class TUp(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = tnn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TMid(tnn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = TResnetBlock(c, c), TAttnBlock(c), TResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class TEncoder(tnn.Module):
    def __init__(self, ch, ch_mult, nrb, attn_res, res, z):
        super().__init__()
        self.conv_in = tnn.Conv2d(3, ch, 3, 1, 1)
        self.down = tnn.ModuleList()
        cin, cur = ch, res
        for i, m in enumerate(ch_mult):
            lvl = tnn.Module()
            lvl.block, lvl.attn = tnn.ModuleList(), tnn.ModuleList()
            for _ in range(nrb):
                lvl.block.append(TResnetBlock(cin, ch * m))
                cin = ch * m
                if cur in attn_res:
                    lvl.attn.append(TAttnBlock(cin))
            if i != len(ch_mult) - 1:
                lvl.downsample = TDown(cin)
                cur //= 2
            self.down.append(lvl)
        self.mid = TMid(cin)
        self.norm_out, self.conv_out = _gn(cin), tnn.Conv2d(cin, 2 * z, 3, 1, 1)
        self.n = len(ch_mult)

    def forward(self, x):
        h = self.conv_in(x)
        for i, lvl in enumerate(self.down):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if i != self.n - 1:
                h = lvl.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class TDecoder(tnn.Module):
    def __init__(self, ch, ch_mult, nrb, attn_res, res, z):
        super().__init__()
        cin = ch * ch_mult[-1]
        cur = res // 2 ** (len(ch_mult) - 1)
        self.conv_in = tnn.Conv2d(z, cin, 3, 1, 1)
        self.mid = TMid(cin)
        self.up = tnn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            lvl = tnn.Module()
            lvl.block, lvl.attn = tnn.ModuleList(), tnn.ModuleList()
            for _ in range(nrb + 1):
                lvl.block.append(TResnetBlock(cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
                if cur in attn_res:
                    lvl.attn.append(TAttnBlock(cin))
            if i != 0:
                lvl.upsample = TUp(cin)
                cur *= 2
            self.up.insert(0, lvl)
        self.norm_out, self.conv_out = _gn(cin), tnn.Conv2d(cin, 3, 3, 1, 1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            lvl = self.up[i]
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn):
                    h = lvl.attn[j](h)
            if i != 0:
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class TAutoencoderKL(tnn.Module):
    def __init__(self, ddconfig, embed_dim):
        super().__init__()
        a = (ddconfig["ch"], ddconfig["ch_mult"], ddconfig["num_res_blocks"], ddconfig["attn_resolutions"],
             ddconfig["resolution"], ddconfig["z_channels"])
        self.encoder, self.decoder = TEncoder(*a), TDecoder(*a)
        self.quant_conv = tnn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = tnn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode(self, x):
        mean, logvar = torch.chunk(self.quant_conv(self.encoder(x)), 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


SMALL = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
             num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
F16D32 = dict(double_z=True, z_channels=32, resolution=256, in_channels=3, out_ch=3, ch=128,
              ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = TAutoencoderKL(SMALL, embed_dim=4).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))  # non-trivial GroupNorm affine and biases
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    sd.update({"loss.discriminator.main.0.weight": np.zeros((2, 3, 4, 4), np.float32),
               "foundation_model.blocks.0.weight": np.zeros((3,), np.float32)})
    model, report = cv.model_from_official({"embed_dim": 4, "ddconfig": SMALL}, sd)
    return ref, model, report, sd


def test_import_report(pair):
    _, model, report, sd = pair
    assert set(report.ignored) == {"loss.discriminator.main.0.weight", "foundation_model.blocks.0.weight"}
    assert len(report.consumed) == len(sd) - 2
    assert model.config["attn_levels"] == (1,)  # resolution 16 of 32 is level 1
    bad = dict(sd, **{"encoder.conv_in.weight": np.zeros((32, 3, 5, 5), np.float32)})
    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        cv.model_from_official({"embed_dim": 4, "ddconfig": SMALL}, bad)
    with pytest.raises(ValueError, match="strict=False"):
        cv.model_from_official({"embed_dim": 4, "ddconfig": SMALL}, dict(sd, **{"encoder.extra": np.zeros(1)}))


def test_encode_decode_vs_torch(pair):
    ref, model, _, _ = pair
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    z = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        mean, logvar = ref.encode(torch.from_numpy(x))
        dec = ref.decode(torch.from_numpy(z))
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    m, lv = moments(model, xj)
    np.testing.assert_allclose(np.asarray(m), mean.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(lv), logvar.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(decode(model, jnp.asarray(z.transpose(0, 2, 3, 1)))),
                               dec.numpy().transpose(0, 2, 3, 1), rtol=RTOL, atol=ATOL)


def test_export_round_trip(pair):
    _, model, _, sd = pair
    out = cv.export_official(model)
    assert set(out) == set(sd) - {"loss.discriminator.main.0.weight", "foundation_model.blocks.0.weight"}
    for k, v in out.items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_latent_normalisation(pair):
    _, model, _, sd = pair
    r = np.random.default_rng(2)
    mu, std = r.standard_normal(4), r.uniform(0.5, 2.0, 4)
    normed, _ = cv.model_from_official({"embed_dim": 4, "ddconfig": SMALL}, sd, latent_mean=mu, latent_std=std,
                                       latent_scale=0.7)
    z = r.standard_normal((1, 2, 2, 4)).astype(np.float32)
    lat = np.asarray(normed.normalize(jnp.asarray(z)))
    np.testing.assert_allclose(lat, (z - mu) / std * 0.7, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(normed.denormalize(jnp.asarray(lat))), z, rtol=1e-5, atol=1e-5)
    x = jnp.asarray(r.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32))
    mean = np.asarray(moments(model, x)[0])
    np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m.encode(x))(normed, x)), (mean - mu) / std * 0.7,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="latent_std"):
        nnx.eval_shape(lambda: ImageVAE("tiny", latent_std=[1.0, 2.0], rngs=nnx.Rngs(0)))


def test_f16c32_layout_key_set():
    with torch.device("meta"):
        ref = TAutoencoderKL(F16D32, embed_dim=32)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    abstract = nnx.eval_shape(lambda: ImageVAE("f16c32", rngs=nnx.Rngs(0)))
    assert cv.official_shapes(abstract) == expected
    assert cv.config_from_official(F16D32, 32) == dict(abstract.config, num_groups=32)
    assert abstract.downsample == 16 and abstract.latent_channels == 32
    exported = cv.export_official(abstract)  # abstract export: shapes only
    assert {k: tuple(v.shape) for k, v in exported.items()} == expected


def test_tiny_trains():
    model = randomized(nnx.eval_shape(lambda: ImageVAE("tiny", rngs=nnx.Rngs(0))))
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p, x):
        recon, aux = nnx.merge(graphdef, p)(x)
        kl = 0.5 * jnp.mean(jnp.square(aux["mean"]) + jnp.exp(aux["logvar"]) - 1 - aux["logvar"])
        return jnp.mean(jnp.square(recon - x)) + 1e-6 * kl

    @jax.jit
    def step(p, x):  # plain SGD: the optimiser is not under test, its compile time would dominate
        loss, g = jax.value_and_grad(loss_fn)(p, x)
        return jax.tree.map(lambda a, b: a - LR * b, p, g), loss

    losses = []
    for _ in range(6):
        params, loss = step(params, images)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_pixel_latent_round_trip():
    x = jax.random.uniform(jax.random.key(0), (2, 32, 48, 3), minval=-1, maxval=1)
    pl = get_image_compressor({"kind": "pixels", "patch": 8})
    lat = pl.encode(x)
    assert lat.shape == (2, 4, 6, 192) and pl.latent_channels == 192 and pl.downsample == 8
    ref = np.asarray(x).reshape(2, 4, 8, 6, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 6, 192)
    np.testing.assert_array_equal(np.asarray(lat), ref)
    np.testing.assert_array_equal(np.asarray(pl.decode(lat)), np.asarray(x))
    with pytest.raises(ValueError, match="divisible"):
        pl.encode(x[:, :30])
    with pytest.raises(ValueError, match="kind"):
        get_image_compressor({"kind": "jpeg"})
    lat = nnx.eval_shape(lambda: get_image_compressor({"kind": "vavae", "variant": "tiny"}, rngs=nnx.Rngs(0)).encode(x))
    assert lat.shape == (2, 2, 3, 8)
