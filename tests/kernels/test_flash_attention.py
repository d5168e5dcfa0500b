"""Pallas flash attention vs float64 numpy / the einsum reference: forward, lse, gradients (dq, dk, dv, via lse).

``TestFlashAttention`` runs the kernels compiled for real (only on a GPU / TPU: Triton + Mosaic GPU on GPU,
Mosaic TPU on TPU); ``TestFlashAttentionInterpret`` re-runs the whole suite in Pallas interpret mode on CPU for
the Triton and Mosaic TPU kernels. The Mosaic GPU kernels (forward, dK/dV, dQ) run on CPU in JAX's Mosaic GPU
interpreter (TMA copies, barriers, warpgroup threads; products as register dots, see mosaic_gpu._mma) on one
small bf16 case (``MGPU_CASES``: it is slow), and are lowered for CUDA (wgmma, layouts, transposed operands) to
check that fwd + bwd are three Mosaic GPU kernels and no Triton call.

Tolerances per dtype (fresh random N(0, 1) inputs): fp32 - max abs error 2e-5 on out / lse, 1e-4 on grads
(interpret mode computes exact fp32; on GPU the fp32 path uses full-precision dots); bf16 - error relative to
the reference's norm (||x - ref|| / ||ref||) below 1e-2 on out and 2e-2 on grads, against the fp32 reference
on the same bf16 inputs.
"""
import dataclasses
import functools
import logging
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scene3d import kernels
from scene3d.kernels import flash
from scene3d.kernels.flash import BlockSizes, flash_attention, reference_attention

TOL = {"float32": dict(out=2e-5, grad=1e-4), "bfloat16": dict(out=1e-2, grad=2e-2)}

# name: (B, Lq, Lk, H, Hk, D, dtype, mask kind, scale, block sizes per backend or None)
CASES = {
    "self_odd_fp32": (1, 17, 17, 2, 2, 64, "float32", None, None),
    "cross_gqa_lengths_mask_fp32": (2, 40, 17, 4, 2, 128, "float32", "lengths+mask", 0.3),
    "cross_headmask_bf16": (1, 64, 40, 2, 2, 64, "bfloat16", "head_mask", None),
    "multi_tile_lengths_fp32": (2, 40, 300, 2, 1, 64, "float32", "lengths", None),
}
# Mosaic GPU interpret mode only (bf16; ~1 min per fwd+bwd on CPU): cross-attention with odd lengths (Lq 70 -> 128 in
# two warpgroup tiles, Lk 150 -> 256 in four streamed 64-key tiles through a 2-deep TMA ring), grouped kv heads,
# kv_lengths + a per-head key mask with one head seeing no key (empty rows: out 0, lse -inf, zero grads).
MGPU_CASES = {
    "mgpu_cross_gqa_masked_bf16": (1, 70, 150, 2, 1, 64, "bfloat16", "lengths+head_mask_empty", 0.2),
}
SMALL_BLOCKS = {  # several q / k tiles per program, to exercise the loops, tile skipping and DMA clamping
    "triton": BlockSizes(16, 32, 16, 32, 16, 32, num_warps=4),
    "mosaic_tpu": BlockSizes(8, 128, 16, 128, 8, 128),
    "mosaic_gpu": BlockSizes(64, 64, 64, 64, 64, 64),
}


def np_attention(q, k, v, valid, scale):
    """float64 numpy; valid (B, H|1, Lk) bool. Returns out (B, Lq, H, D), lse (B, Lq, H); empty rows 0 / -inf."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    h = q.shape[2]
    k, v = np.repeat(k, h // k.shape[2], axis=2), np.repeat(v, h // v.shape[2], axis=2)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(valid[:, :, None, :], s, -np.inf)
    mx = s.max(-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.exp(s - mx)
    tot = e.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", e / np.where(tot == 0, 1, tot), v)
    with np.errstate(divide="ignore"):
        lse = (np.log(tot) + mx)[..., 0].transpose(0, 2, 1)
    return out, lse


def make_inputs(case, seed):
    b, lq, lk, h, hk, d, dtype, mask_kind, scale = {**CASES, **MGPU_CASES}[case]
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    q, k, v = (jnp.asarray(rng.standard_normal(s, np.float32), dt) for s in ((b, lq, h, d), (b, lk, hk, d),
                                                                             (b, lk, hk, d)))
    kw, valid = {}, np.ones((b, 1, lk), bool)
    if mask_kind and "lengths" in mask_kind:
        lengths = np.array([lk - 3, 0][:b] if mask_kind.startswith("lengths+") else [lk - 10, 100][:b], np.int32)
        kw["kv_lengths"] = jnp.asarray(lengths)
        valid = valid & (np.arange(lk)[None, None, :] < lengths[:, None, None])
    if mask_kind and "mask" in mask_kind:
        shape = (b, h, 1, lk) if "head_mask" in mask_kind else (b, 1, 1, lk)
        m = rng.random(shape) < 0.7
        if mask_kind.endswith("_empty"):
            m[:, -1] = False  # the last head sees no key
        kw["mask"] = m
        valid = valid & m[:, :, 0, :]
    return (q, k, v), kw, valid, (1 / np.sqrt(d) if scale is None else scale)


def weights(q, seed):
    rng = np.random.default_rng(seed)
    b, lq, h, _ = q.shape
    return jnp.asarray(rng.standard_normal(q.shape, np.float32)), jnp.asarray(rng.standard_normal((b, lq, h), np.float32))


def loss_fn(attn, w, wl):
    """sum(out * w) + sum(lse * wl) over finite lse: checks the lse's gradient too."""
    def loss(q, k, v):
        out, lse = attn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * wl)
    return loss


@functools.lru_cache(maxsize=None)
def run_case(backend, interpret, case, small_blocks):
    """(flash out, lse, grads), (reference ...), numpy (out, lse) for one case - compiled once, shared by tests."""
    (q, k, v), kw, valid, scale = make_inputs(case, seed=zlib.crc32(f"{backend}/{case}".encode()))
    w, wl = weights(q, seed=7)
    bs = SMALL_BLOCKS[backend] if small_blocks else None
    fl = functools.partial(flash_attention, backend=backend, interpret=interpret, block_sizes=bs, scale=scale,
                           return_lse=True, **kw)
    up = lambda t: t.astype(jnp.float32)  # noqa: E731 - reference on the same (rounded) inputs, in fp32
    ref = lambda q, k, v: reference_attention(up(q), up(k), up(v), scale=scale, return_lse=True, **kw)  # noqa

    def both(attn):
        return jax.jit(lambda q, k, v: (attn(q, k, v), jax.grad(loss_fn(attn, w, wl), argnums=(0, 1, 2))(q, k, v)))
    got = jax.tree.map(np.asarray, both(fl)(q, k, v))
    want = jax.tree.map(np.asarray, both(ref)(q, k, v))
    return got, want, np_attention(up(q), up(k), up(v), valid, scale)


def _err(x, ref, dtype):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if dtype == "float32":
        return np.max(np.abs(x - ref))
    return np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-12)


def check_forward(result, case):
    """out / lse against float64 numpy; rows with no visible key: lse -inf, out 0."""
    ((out, lse), _), _, (np_out, np_lse) = result
    b, lq, lk, h, hk, d, dtype = case[:7]
    assert out.shape == (b, lq, h, d) and out.dtype == jnp.dtype(dtype) and lse.shape == (b, lq, h)
    assert not np.any(np.isnan(out)) and not np.any(np.isnan(lse))
    empty = np.isneginf(np_lse)
    np.testing.assert_array_equal(np.isneginf(lse), empty)
    np.testing.assert_array_equal(out.astype(np.float32)[empty], 0.0)
    assert _err(out, np_out, dtype) < TOL[dtype]["out"]
    assert _err(np.where(empty, 0, lse), np.where(empty, 0, np_lse), dtype) < TOL[dtype]["out"]


def check_gradients(result, case):
    """dq, dk, dv (through out and lse) against the einsum reference's autodiff."""
    (_, grads), (_, ref_grads), _ = result
    dtype = case[6]
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.shape == r.shape and g.dtype == jnp.dtype(dtype) and np.all(np.isfinite(g)), name
        assert _err(g, r, dtype) < TOL[dtype]["grad"], (name, _err(g, r, dtype))


class TestFlashAttention:
    INTERPRET = False
    BACKENDS = ("triton", "mosaic_gpu", "mosaic_tpu")

    def backend_or_skip(self, backend, dtype=None):
        if backend not in self.BACKENDS:
            pytest.skip(f"{backend} is not run by {type(self).__name__}")
        if not self.INTERPRET:
            platform = {"triton": "gpu", "mosaic_gpu": "gpu", "mosaic_tpu": "tpu"}[backend]
            if jax.default_backend() != platform:
                pytest.skip(f"{backend} compiles only on {platform}")
            if backend == "mosaic_gpu" and not flash._gpu_capability()[0] == 9:
                pytest.skip("Mosaic GPU kernel targets Hopper (sm_90)")
        if backend == "mosaic_gpu" and dtype == "float32":
            pytest.skip("Mosaic GPU kernel takes 16-bit inputs")

    @pytest.mark.parametrize("backend", ["triton", "mosaic_gpu", "mosaic_tpu"])
    @pytest.mark.parametrize("case", list(CASES))
    def test_forward_and_lse_vs_numpy(self, backend, case):
        self.backend_or_skip(backend, CASES[case][6])
        check_forward(run_case(backend, self.INTERPRET, case, case == "multi_tile_lengths_fp32"), CASES[case])

    @pytest.mark.parametrize("backend", ["triton", "mosaic_gpu", "mosaic_tpu"])
    @pytest.mark.parametrize("case", list(CASES))
    def test_gradients_vs_reference(self, backend, case):
        self.backend_or_skip(backend, CASES[case][6])
        check_gradients(run_case(backend, self.INTERPRET, case, case == "multi_tile_lengths_fp32"), CASES[case])

    @pytest.mark.parametrize("backend", ["triton", "mosaic_tpu"])
    def test_dispatcher_pinned_backend(self, backend, caplog):
        self.backend_or_skip(backend)
        (q, k, v), kw, valid, scale = make_inputs("self_odd_fp32", seed=3)
        with caplog.at_level(logging.INFO):
            out = jax.jit(lambda q, k, v: kernels.attention(q, k, v, impl=f"pallas_{backend}", **kw))(q, k, v)
        np.testing.assert_allclose(out, np_attention(q, k, v, valid, scale)[0], atol=2e-5)
        assert any(f"backend='{backend}'" in r.getMessage() for r in caplog.records)


class TestFlashAttentionInterpret(TestFlashAttention):
    """The same suite in Pallas interpret mode (CPU); Mosaic GPU: test_mosaic_gpu_interpret_forward_and_gradients."""
    INTERPRET = True
    BACKENDS = ("triton", "mosaic_tpu")


# ---------------------------------------------------------------------------------------------------------------
# Mosaic GPU (Hopper) without a GPU: the kernels run in the Mosaic GPU interpreter; they lower for CUDA; tiles and
# shared memory fit.


@pytest.mark.slow
@pytest.mark.parametrize("case", list(MGPU_CASES))
def test_mosaic_gpu_interpret_forward_and_gradients(case):
    """Forward, lse and the Mosaic GPU backward (dq, dk, dv) in the Mosaic GPU interpreter vs numpy / reference."""
    result = run_case("mosaic_gpu", True, case, True)
    check_forward(result, MGPU_CASES[case])
    check_gradients(result, MGPU_CASES[case])
    (_, grads), _, (_, np_lse) = result
    b, lq, lk, h, hk = MGPU_CASES[case][:5]
    dk, dv = (np.asarray(g, np.float32) for g in grads[1:])
    if MGPU_CASES[case][7].endswith("_empty"):  # a head that sees no key gets exactly zero dq
        assert np.all(np.isneginf(np_lse[:, :, -1]))
        np.testing.assert_array_equal(np.asarray(grads[0], np.float32)[:, :, -1], 0.0)
    np.testing.assert_array_equal(dk[:, lk - 3:], 0.0)  # keys beyond kv_lengths get no gradient
    np.testing.assert_array_equal(dv[:, lk - 3:], 0.0)


@pytest.mark.parametrize("d,masked", [(64, True), (128, False)])
def test_mosaic_gpu_lowers_for_cuda(d, masked):
    """fwd + bwd of backend='mosaic_gpu' lower (Pallas -> Mosaic GPU, wgmma layouts included) to three Mosaic GPU
    kernels (forward, dK/dV, dQ) and no Triton call."""
    q = jax.ShapeDtypeStruct((2, 200, 4, d), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 77, 2, d), jnp.bfloat16)

    def f(q, k, v):
        kw = dict(kv_lengths=jnp.array([77, 5], jnp.int32)) if masked else {}
        return jax.grad(lambda q, k, v: jnp.sum(flash_attention(q, k, v, backend="mosaic_gpu", interpret=False,
                                                                **kw).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)
    text = jax.jit(f).trace(q, k, k).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("custom_call @mosaic_gpu_v2") == 3  # forward, dK/dV, dQ
    for name in ("fwd", "bwd_dkv", "bwd_dq"):
        assert f"scene3d_flash_{name}_mgpu" in text
    assert "triton" not in text


def test_block_sizes_defaults_and_smem_budget():
    from scene3d.kernels.flash import mosaic_gpu
    for backend in flash.BACKENDS:
        for lq, lk, d in ((17, 40, 64), (4096, 4096, 128), (1, 300, 64)):
            bs = BlockSizes.get_default(backend, lq, lk, d, jnp.bfloat16)
            mod = flash._backend_module(backend)
            qm = mosaic_gpu.q_multiple(bs) if backend == "mosaic_gpu" else bs.q_multiple
            km = mosaic_gpu.k_multiple(bs) if backend == "mosaic_gpu" else bs.k_multiple
            mod.check_supported((1, lq, 2, d), (1, lk, 2, d), jnp.bfloat16, bs, -(-lq // qm) * qm, -(-lk // km) * km)
    tiny = BlockSizes.get_default("triton", 17, 40, 64)
    assert (tiny.block_q, tiny.block_k) == (32, 64)  # shrunk to the sequence: little padding
    hopper = BlockSizes.get_default("mosaic_gpu", 4096, 4096, 128)
    assert mosaic_gpu.smem_bytes(hopper, 128) <= 227 * 1024  # H100 / H200 shared memory per block (all 3 kernels)
    big = dataclasses.replace(hopper, block_k_dq=128, block_q_dkv=128)
    assert mosaic_gpu.smem_bytes(big, 128) <= 227 * 1024


def test_clear_errors():
    q = jnp.zeros((1, 8, 2, 64))
    with pytest.raises(ValueError, match="head_dim must be one of"):
        flash_attention(jnp.zeros((1, 8, 2, 32)), jnp.zeros((1, 8, 2, 32)), jnp.zeros((1, 8, 2, 32)))
    with pytest.raises(ValueError, match="key-padding masks only"):
        flash_attention(q, q, q, mask=np.ones((1, 1, 8, 8), bool), backend="triton")
    with pytest.raises(ValueError, match="power of two"):
        flash_attention(q, q, q, backend="triton", block_sizes=BlockSizes(24, 32, 32, 32, 32, 32))
    with pytest.raises(ValueError, match="multiple of 128"):
        flash_attention(q, q, q, backend="mosaic_tpu", block_sizes=BlockSizes(8, 64, 8, 128, 8, 128))
    with pytest.raises(ValueError, match="16-bit|bf16"):
        flash_attention(q, q, q, backend="mosaic_gpu")
    with pytest.raises(ValueError, match="unknown backend"):
        flash_attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="must be a multiple of kv heads"):
        flash_attention(jnp.zeros((1, 8, 3, 64)), q, q)
    # 'auto' on CPU stays on xla; on GPU/TPU per-query masks fall back from pallas
    assert flash.unsupported_reason(q, q, q, np.ones((1, 1, 8, 8), bool)) is not None
    assert flash.unsupported_reason(q, q, q, np.ones((1, 2, 1, 8), bool)) is None


def test_benchmark_smoke(capsys):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--smoke", "--impls", "xla,pallas", "--dtype", "fp32"])
    text = capsys.readouterr().out
    assert "fwd+bwd ms" in text and "pallas" in text and "xla" in text
    assert all("error" not in r and r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in rows)
