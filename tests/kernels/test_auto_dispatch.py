"""attn_impl='auto' on a (faked) GPU / TPU: a real kernel or a WARNING, never a silent einsum.

No accelerator here: the platform the dispatcher sees is faked through ``attention._platform`` and the GPU's compute
capability through ``flash._gpu_capability`` (and cuDNN's head-dim limit through ``attention._gpu_head_dim_limit``).
Only decisions are checked on a fake GPU; the einsum fallback is also run and compared with numpy.
"""
import importlib
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from scene3d.kernels import flash

attn = importlib.import_module("scene3d.kernels.attention")  # the module (the package re-exports the function)

A100, H100 = (8, 0), (9, 0)


def qkv(lq=16, lk=24, h=2, d=64, dtype=jnp.bfloat16, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((2, n, h, d), np.float32), dtype) for n in (lq, lk, lk))


@pytest.fixture
def fake(monkeypatch):
    """fake(platform, capability): make the dispatcher see that accelerator; fresh once-per-shape log memory."""
    monkeypatch.setattr(attn, "_LOGGED", set())

    def set_(platform, cc=(0, 0)):
        monkeypatch.setattr(attn, "_platform", lambda: platform)
        monkeypatch.setattr(flash, "_gpu_capability", lambda: cc)
        monkeypatch.setattr(attn, "_gpu_head_dim_limit", lambda: 256 if cc[0] >= 9 else 128)
    return set_


def test_cpu_auto_is_xla_without_warning(fake, caplog):
    fake("cpu")
    q, k, v = qkv(d=32, dtype=jnp.float32)
    assert attn.resolve_auto(q, k) == ("xla", ())
    with caplog.at_level(logging.INFO, logger=attn.__name__):
        attn.attention(q, k, v, impl="auto")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("cc,dtype,d,mask,want", [
    (H100, jnp.bfloat16, 128, None, "pallas_mosaic_gpu"),          # Hopper, 16-bit: the Mosaic GPU kernels
    (H100, jnp.float32, 64, "key", "pallas_triton"),                # fp32: no wgmma fp32 operand -> Triton
    (A100, jnp.bfloat16, 64, "key", "pallas_triton"),               # pre-Hopper: Triton
    (A100, jnp.bfloat16, 32, None, "cudnn"),                        # head_dim 32: not ours, cuDNN's
    (A100, jnp.float16, 64, "query", "cudnn"),                      # per-query mask: not ours, cuDNN's (even L)
    (H100, jnp.bfloat16, 256, None, "cudnn"),                       # head_dim 256: cuDNN on Hopper only
])
def test_gpu_auto_picks_a_kernel(fake, cc, dtype, d, mask, want):
    fake("gpu", cc)
    q, k, _ = qkv(d=d, dtype=dtype)
    m = {None: None, "key": np.ones((2, 1, 1, 24), bool), "query": np.ones((2, 1, 16, 24), bool)}[mask]
    assert attn.resolve_auto(q, k, m) == (want, ())


def test_tpu_auto_picks_mosaic_tpu(fake):
    fake("tpu")
    q, k, _ = qkv(d=128, dtype=jnp.float32)
    assert attn.resolve_auto(q, k) == ("pallas_mosaic_tpu", ())


@pytest.mark.parametrize("platform,cc,dtype,d,words", [
    ("gpu", A100, jnp.float32, 32, ("head_dim", "bf16/fp16")),      # neither kernel takes fp32 with head_dim 32
    ("gpu", A100, jnp.bfloat16, 256, ("head_dim <= 128",)),        # head_dim 256: over cuDNN's pre-Hopper limit
    ("tpu", (0, 0), jnp.bfloat16, 96, ("head_dim",)),               # TPU: no cuDNN behind Pallas
])
def test_fallback_to_einsum_warns_once_per_shape(fake, caplog, platform, cc, dtype, d, words):
    fake(platform, cc)
    q, k, v = qkv(d=d, dtype=dtype)
    name, reasons = attn.resolve_auto(q, k)
    assert name == "xla" and len(reasons) == (2 if platform == "gpu" else 1)
    with caplog.at_level(logging.INFO, logger=attn.__name__):
        out1 = attn.attention(q, k, v, impl="auto")
        attn.attention(q, k, v, impl="auto")                        # same shape: no second warning
        attn.attention(q[:, :8], k, v, impl="auto")                 # new shape: warned again
    warns = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 2, warns
    assert "falls back to the einsum" in warns[0] and platform in warns[0]
    assert all(w in warns[0] for w in words), warns[0]
    # the fallback still computes attention: vs float64 numpy on the same (rounded) inputs
    qn, kn, vn = (np.asarray(t, np.float64) for t in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), vn)
    tol = 2e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(out1, np.float64), ref, atol=tol, rtol=tol)


def test_triton_lowering_gone_moves_a100_to_cudnn(fake, monkeypatch, caplog):
    """A JAX after the Triton lowering's removal: Pallas declines on A100, bf16 goes to cuDNN, fp32 warns."""
    fake("gpu", A100)
    real = flash._backend_module

    def backend_module(name):
        if name == "triton":
            raise ModuleNotFoundError("No module named 'jax.experimental.pallas.triton'",
                                      name="jax.experimental.pallas.triton")
        return real(name)
    monkeypatch.setattr(flash, "_backend_module", backend_module)
    q, k, v = qkv(d=64, dtype=jnp.bfloat16)
    assert attn.resolve_auto(q, k) == ("cudnn", ())
    q32, k32, v32 = qkv(d=64, dtype=jnp.float32)
    name, reasons = attn.resolve_auto(q32, k32)
    assert name == "xla" and "'triton' lowering unavailable" in reasons[0] and "bf16/fp16" in reasons[1]
    fake("gpu", H100)  # Hopper bf16 never needed Triton
    assert attn.resolve_auto(q, k) == ("pallas_mosaic_gpu", ())
    with caplog.at_level(logging.WARNING, logger=attn.__name__):
        attn.attention(q32, k32, v32, impl="auto")
    assert any("'triton' lowering unavailable" in r.getMessage() for r in caplog.records)


def test_named_kernel_raises_instead_of_falling_back(fake):
    fake("gpu", A100)
    q, k, v = qkv(d=32, dtype=jnp.float32)
    with pytest.raises(RuntimeError, match="cuDNN attention needs bf16/fp16"):
        attn.attention(q, k, v, impl="cudnn")
    qb, kb, vb = qkv(d=64, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="per-query mask"):
        attn.attention(qb, kb, vb, impl="pallas", mask=np.ones((2, 1, 16, 24), bool))
    with pytest.raises(ValueError, match="head_dim"):
        attn.attention(q, k, v, impl="pallas_triton")
