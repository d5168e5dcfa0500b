"""Pluggable conditioning encoders for latent generators: class label, caption text, rendered image.

Every encoder is an ``nnx.Module`` with the same contract, so a generator takes any of them:

    tokens, mask = encoder(inputs, drop=drop)     # (B, L, dim) condition tokens, (B, L) bool key mask

``inputs`` is a dict of the batch fields named in ``encoder.batch_keys``; ``drop`` (B,) bool replaces an example's
condition by the encoder's *null* condition (a learned embedding): condition dropout during training and the
unconditional branch of classifier-free guidance at sampling. The tokens go to the generator's cross-attention.

- ``LabelEncoder``: class index -> one learned token (row ``num_classes`` of the table is the null class).
- ``TextEncoder``: a frozen host-side *text backbone* turns captions into feature tokens in the data pipeline
  (``batch['text_tokens']`` (B, L, D), ``batch['text_mask']`` (B, L)); the module projects them to ``dim``; its
  null condition is one learned token. Backbones (``TEXT_BACKBONES``, chosen by name):
    'hashed_bow'  ``HashedBagOfWords``: deterministic hashed bag-of-words features, no weights, no download;
    'hf_local'    ``LocalHFText``: a real text model from a local folder (``local_files_only``; nothing downloads):
                  a CLIP text tower (CLIPTextModel, or the text half of a whole CLIPModel) or a T5 encoder
                  (T5EncoderModel, or the encoder of a whole T5), saved with transformers' ``save_pretrained`` next
                  to its tokenizer; last hidden states as tokens.
- ``ImageEncoder``: an image (B, H, W, 3) in [0, 1] (e.g. a rendered view) -> patch features (a stride-p conv as
  patchify + linear, GELU, linear), all patch tokens or their mean; its null condition is a learned token set.
"""
from __future__ import annotations

import hashlib
import inspect
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import nn
from scene3d.core.sharding import param_init

_WORD = re.compile(r"[a-z0-9]+")


# ----------------------------------------------------------------------------------------------- text backbones


def words(caption: str) -> list[str]:
    """Lower-case alphanumeric words of a caption."""
    if not isinstance(caption, str):
        raise ValueError(f"caption: expected a str, got {type(caption).__name__}")
    return _WORD.findall(caption.lower())


class HashedBagOfWords:
    """Frozen text features without weights: every word maps to a fixed pseudo-random unit-norm vector.

    word -> seed = first 8 bytes of blake2b(f"{seed}:{word}") -> N(0, I_dim) / sqrt(dim) from numpy's PCG64. A
    caption is the bag (multiset) of its words' vectors: ``max_words`` tokens in order of appearance (later
    words are cut), zero-padded, with a mask. Deterministic across processes and machines (no Python ``hash``).
    Captions with the same words in any order give the same set of tokens; different words give (almost surely)
    different tokens. The empty caption gives no valid token (mask all False): pass a non-empty caption.
    """

    def __init__(self, dim: int = 64, max_words: int = 16, seed: int = 0):
        if dim < 1 or max_words < 1:
            raise ValueError(f"HashedBagOfWords: dim and max_words must be >= 1, got {dim}, {max_words}")
        self.dim, self.max_words, self.seed = int(dim), int(max_words), int(seed)
        self._cache: dict[str, np.ndarray] = {}

    def word_vector(self, word: str) -> np.ndarray:
        v = self._cache.get(word)
        if v is None:
            h = hashlib.blake2b(f"{self.seed}:{word}".encode(), digest_size=8).digest()
            rng = np.random.Generator(np.random.PCG64(int.from_bytes(h, "little")))
            v = (rng.standard_normal(self.dim) / np.sqrt(self.dim)).astype(np.float32)
            self._cache[word] = v
        return v

    def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """captions (B,) -> (tokens (B, max_words, dim) float32, mask (B, max_words) bool)."""
        b = len(captions)
        tokens = np.zeros((b, self.max_words, self.dim), np.float32)
        mask = np.zeros((b, self.max_words), bool)
        for i, c in enumerate(captions):
            for j, w in enumerate(words(c)[:self.max_words]):
                tokens[i, j] = self.word_vector(w)
                mask[i, j] = True
        return tokens, mask


class LocalHFText:
    """A transformers text encoder from a local folder (tokenizer + model files; nothing downloads).

    The encoder class follows the folder's ``config.json`` ``model_type`` (``TEXT_TOWERS``): a CLIP text tower for
    'clip_text_model' and 'clip' (a whole CLIPModel: its text half), the encoder stack alone for 't5' / 'mt5' /
    'umt5' (a whole encoder-decoder checkpoint loads only its encoder weights); any other type through
    ``AutoModel`` (its encoder when it is an encoder-decoder). Tokens are the last hidden states
    (B, max_words, hidden size) of the captions padded / truncated to ``max_words`` tokens (CLIP: after its final
    layer norm; T5: after the encoder's final norm), the mask the tokenizer's attention mask. Runs with PyTorch on
    the host, in the data pipeline (frozen, float32).
    """

    def __init__(self, path: str, max_words: int = 32):
        import torch  # noqa: F401  (fail early with a clear ImportError)
        import transformers
        self.path, self.max_words = str(path), int(max_words)
        if not path:
            raise ValueError("LocalHFText: config.cond.text.path is empty; name a local transformers folder")
        try:
            config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            cls = TEXT_TOWERS.get(config.model_type)
            model = (getattr(transformers, cls) if cls else transformers.AutoModel).from_pretrained(
                self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"LocalHFText: cannot load a tokenizer + model from {self.path!r}: {e}") from None
        if getattr(model.config, "is_encoder_decoder", False):  # an AutoModel encoder-decoder: keep its encoder
            model = model.get_encoder()
        if self.tokenizer.pad_token is None:
            raise ValueError(f"LocalHFText: the tokenizer in {self.path!r} has no pad token (captions are padded "
                             f"to max_words={self.max_words})")
        self.model = model.float().eval()
        cfg = model.config
        self.dim = int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        import torch
        enc = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_words,
                             return_tensors="pt")
        with torch.no_grad():
            out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out.last_hidden_state.float().numpy(), enc["attention_mask"].numpy().astype(bool)


# config.json model_type -> the transformers class holding the text encoder alone.
TEXT_TOWERS = {"clip_text_model": "CLIPTextModel", "clip": "CLIPTextModel", "t5": "T5EncoderModel",
               "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}

TEXT_BACKBONES: dict[str, Callable[..., Any]] = {"hashed_bow": HashedBagOfWords, "hf_local": LocalHFText}


def make_text_backbone(name: str, **kwargs):
    """A text backbone by name (``TEXT_BACKBONES``) with its keyword arguments. A config's ``cond.text`` section
    holds the fields of every backbone (e.g. ``dim`` for 'hashed_bow', ``path`` for 'hf_local'); those of other
    backbones are dropped, keys no backbone takes are an error."""
    if name not in TEXT_BACKBONES:
        raise ValueError(f"text backbone {name!r}: known {sorted(TEXT_BACKBONES)}")
    params = {n: set(inspect.signature(cls.__init__).parameters) - {"self"} for n, cls in TEXT_BACKBONES.items()}
    unknown = set(kwargs) - set().union(*params.values())
    if unknown:
        raise ValueError(f"config.cond.text: unknown keys {sorted(unknown)} (backbone fields: "
                         f"{ {n: sorted(p) for n, p in params.items()} })")
    return TEXT_BACKBONES[name](**{k: v for k, v in kwargs.items() if k in params[name]})


# ----------------------------------------------------------------------------------------------- encoders


def _null_where(drop, tokens, mask, null_tokens, null_mask):
    """Per example: (null_tokens, null_mask) where drop else (tokens, mask)."""
    if drop is None:
        return tokens, mask
    d = jnp.asarray(drop, bool)
    if d.shape != tokens.shape[:1]:
        raise ValueError(f"condition drop mask must be (B,) = ({tokens.shape[0]},), got {d.shape}")
    tokens = jnp.where(d[:, None, None], null_tokens[None].astype(tokens.dtype), tokens)
    mask = jnp.where(d[:, None], null_mask[None], mask)
    return tokens, mask


def _get(inputs: dict, key: str, ndim: int, what: str):
    if key not in inputs:
        raise ValueError(f"conditioning input {key!r} ({what}) missing; got {sorted(inputs)}")
    x = inputs[key]
    if np.ndim(x) != ndim:
        raise ValueError(f"conditioning input {key!r}: expected {what}, got shape {np.shape(x)}")
    return x


class LabelEncoder(nnx.Module):
    """Class index (B,) int -> (B, 1, dim) learned token; index ``num_classes`` is the null class."""

    kind = "label"
    batch_keys = ("label",)

    def __init__(self, num_classes: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if num_classes < 1:
            raise ValueError(f"LabelEncoder: num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.table = nnx.Embed(num_classes + 1, dim, embedding_init=param_init(nnx.initializers.normal(0.02),
                                                                              ("vocab", "embed")),
                               dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, inputs: dict, *, drop=None):
        labels = jnp.asarray(_get(inputs, "label", 1, "class indices (B,)"), jnp.int32)
        if drop is not None:
            labels = jnp.where(jnp.asarray(drop, bool), self.num_classes, labels)
        tokens = self.table(labels)[:, None]
        return tokens, jnp.ones(tokens.shape[:2], bool)


class TextEncoder(nnx.Module):
    """Backbone text features (B, L, in_dim) + mask -> (B, L, dim) tokens; null = one learned token."""

    kind = "text"
    batch_keys = ("text_tokens", "text_mask")

    def __init__(self, in_dim: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_dim, self.dim = int(in_dim), int(dim)
        self.norm = nn.LayerNorm(in_dim, dtype=dtype, param_dtype=param_dtype)
        self.proj = nn.dense(in_dim, dim, ("cond", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.null = nnx.Param(param_init(nnx.initializers.normal(0.02), (None, "embed"))(rngs.params(), (1, dim),
                                                                                           param_dtype))

    def __call__(self, inputs: dict, *, drop=None):
        x = _get(inputs, "text_tokens", 3, f"text features (B, L, {self.in_dim})")
        mask = jnp.asarray(_get(inputs, "text_mask", 2, "text mask (B, L)"), bool)
        if x.shape[-1] != self.in_dim or mask.shape != x.shape[:2]:
            raise ValueError(f"TextEncoder: text_tokens must be (B, L, {self.in_dim}) with text_mask (B, L), got "
                             f"{x.shape} and {mask.shape}")
        tokens = self.proj(self.norm(jnp.asarray(x)))
        length = tokens.shape[1]
        null = jnp.zeros((length, self.dim), tokens.dtype).at[0].set(self.null[...][0].astype(tokens.dtype))
        null_mask = jnp.arange(length) == 0
        return _null_where(drop, tokens, mask, null, null_mask)


class ImageEncoder(nnx.Module):
    """Image (B, H, W, 3) in [0, 1] -> patch tokens (B, (H/p)(W/p), dim), or their mean (B, 1, dim) with
    ``pool='mean'``; null = a learned token set of the same length."""

    kind = "image"
    batch_keys = ("cond_image",)

    def __init__(self, image_size: int, dim: int, *, patch: int = 8, pool: str = "mean", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        if image_size % patch:
            raise ValueError(f"ImageEncoder: image_size {image_size} is not divisible by patch {patch}")
        if pool not in ("mean", "none"):
            raise ValueError(f"ImageEncoder: pool must be 'mean' or 'none', got {pool!r}")
        self.image_size, self.dim, self.pool = int(image_size), int(dim), pool
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.patch = nn.PatchEmbed(3, dim, patch, rngs=rngs, **kw)
        self.mix = nn.dense(dim, dim, (None, "embed"), rngs=rngs, **kw)
        length = 1 if pool == "mean" else (image_size // patch) ** 2
        self.null = nnx.Param(param_init(nnx.initializers.normal(0.02), (None, "embed"))(rngs.params(),
                                                                                           (length, dim),
                                                                                           param_dtype))

    def __call__(self, inputs: dict, *, drop=None):
        img = _get(inputs, "cond_image", 4, f"images (B, {self.image_size}, {self.image_size}, 3)")
        if img.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"ImageEncoder: cond_image must be (B, {self.image_size}, {self.image_size}, 3), "
                             f"got {img.shape}")
        h = self.mix(jax.nn.gelu(self.patch(jnp.asarray(img) * 2.0 - 1.0)))
        if self.pool == "mean":
            h = jnp.mean(h, axis=1, keepdims=True)
        return _null_where(drop, h, jnp.ones(h.shape[:2], bool), self.null[...],
                           jnp.ones((h.shape[1],), bool))


ENCODERS = ("label", "text", "image")


def make_cond_encoder(spec, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    """Encoder from a config dict ``spec`` (``kind`` + its fields), or None for ``kind='none'``.

    label: num_classes. text: backbone_dim (the backbone's feature size). image: image_size, patch, pool.
    """
    kind = spec.get("kind", "none")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if kind == "none":
        return None
    if kind == "label":
        return LabelEncoder(int(spec["num_classes"]), dim, **kw)
    if kind == "text":
        return TextEncoder(int(spec["backbone_dim"]), dim, **kw)
    if kind == "image":
        return ImageEncoder(int(spec["image_size"]), dim, patch=int(spec.get("patch", 8)),
                            pool=spec.get("pool", "mean"), **kw)
    raise ValueError(f"config.cond.kind: unknown {kind!r} (known: none, {', '.join(ENCODERS)})")
