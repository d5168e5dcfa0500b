"""Independent float64 numpy re-implementations used as references by the nn tests."""
import numpy as np
from scipy.special import erf, logsumexp


def pure(state):
    """nnx.State of Params -> nested dict of float64 numpy arrays."""
    out = {}
    for k, v in state.items():
        if hasattr(v, "items"):
            out[k] = pure(v)
        else:
            out[k] = np.asarray(v[...] if hasattr(v, "get_value") else v, np.float64)
    return out


def layernorm(x, scale=None, bias=None, eps=1e-6):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def rmsnorm(x, scale=None, bias=None, eps=1e-6):
    x = np.asarray(x, np.float64)
    y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def silu(x):
    return x / (1 + np.exp(-x))


def linear(p, x):
    y = np.asarray(x, np.float64) @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def mlp(p, x, act=gelu_tanh):
    return linear(p["fc2"], act(linear(p["fc1"], x)))


def softmax_attention(q, k, v, keep=None):
    """q (B,Lq,H,D), k/v (B,Lk,H,D); keep broadcastable to (B,H,Lq,Lk)."""
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if keep is not None:
        logits = np.where(keep, logits, -np.inf)
    logits = logits - logits.max(-1, keepdims=True)
    e = np.exp(logits)
    return np.einsum("bhqk,bkhd->bqhd", e / e.sum(-1, keepdims=True), v)


def attention(p, x, context=None, heads=1, kv_heads=None, keep=None, qk_norm=None, q_hook=None, k_hook=None):
    """Multi-head attention with params {q,k,v,out[,q_norm,k_norm]}."""
    context = x if context is None else context
    kv_heads = kv_heads or heads
    b, lq, _ = x.shape
    lk = context.shape[1]
    q = linear(p["q"], x).reshape(b, lq, heads, -1)
    k = linear(p["k"], context).reshape(b, lk, kv_heads, -1)
    v = linear(p["v"], context).reshape(b, lk, kv_heads, -1)
    if qk_norm is not None:
        q = qk_norm(q, p["q_norm"]["scale"])
        k = qk_norm(k, p["k_norm"]["scale"])
    if q_hook is not None:
        q = q_hook(q)
    if k_hook is not None:
        k = k_hook(k)
    k, v = np.repeat(k, heads // kv_heads, 2), np.repeat(v, heads // kv_heads, 2)
    o = softmax_attention(q, k, v, keep)
    return linear(p["out"], o.reshape(b, lq, -1))


def modulate(x, shift, scale):
    if shift.ndim == 2:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


def rope_1d(x, pos, theta=10000.0, interleaved=False):
    """Rotate (B, L, H, d) by positions (L,) using complex multiplication."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2) / d)
    rot = np.exp(1j * np.asarray(pos, np.float64)[:, None] * freqs)[None, :, None, :]
    z = (x[..., 0::2] + 1j * x[..., 1::2]) if interleaved else (x[..., :d // 2] + 1j * x[..., d // 2:])
    z = z * rot
    if interleaved:
        return np.stack([z.real, z.imag], -1).reshape(x.shape)
    return np.concatenate([z.real, z.imag], -1)


def swiglu(p, x):
    return linear(p["w_down"], silu(linear(p["w_gate"], x)) * linear(p["w_up"], x))


def attention_heads(q, k, v, keep=None):
    """Per-head softmax attention before the output projection and its log-sum-exp: q (B,Lq,H,D), k/v (B,Lk,H,D)
    -> o (B,Lq,H,D), lse (B,Lq,H) (-inf where nothing is kept; o is 0 there)."""
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if keep is not None:
        logits = np.where(keep, logits, -np.inf)
    lse = logsumexp(logits, axis=-1)
    with np.errstate(invalid="ignore"):
        w = np.nan_to_num(np.exp(logits - lse[..., None]))
    return np.einsum("bhqk,bkhd->bqhd", w, v), lse.transpose(0, 2, 1)
