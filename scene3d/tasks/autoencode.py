"""Stage 1: train a scene tokenizer as an autoencoder. Today: the Can3Tok 3DGS VAE (``config.model.name='can3tok'``).

An example's ``gaussians`` rows are made by the data pipeline (``scene3d.data.gs_pipeline``): the packed raw
channels of ``scene3d.geometry.gaussians`` (xyz, f_dc, opacity, log-scale, rot wxyz[, f_rest]) of a crop normalised
into the unit ball (randomly rotated in training), in a canonical row order (``data.gaussians.order``), optionally
prefixed by 4 voxel columns (``data.gaussians.rows='release18'``, the release's 18-channel rows, read with
``model.input_offset=4``). The packed channels are the reconstruction target.

loss = recon(pred, target) + beta(step) * KL, with recon one of ``scene3d.losses.RECON_LOSSES`` ('mse': the mean
over all B x N x C raw values, every channel weighted 1), KL the batch mean of KL(q(z|x) || N(0, I)) summed over
the latent, and beta(step) = beta * min(1, step / kl_anneal_steps). The posterior is sampled with its noise scaled
by min(1, step / loss.posterior_warmup_steps) (0: full noise from step 0, the release), so a warm-up first trains
a plain autoencoder on the posterior mean.

Evaluation reports the Can3Tok metrics (per-scene L2, the release's batch figure ``l2_batch``, failure rate),
MSE per channel group and KL of the reconstruction of the posterior mean (``metrics.eval_posterior='mean'``) or
of a posterior sample (``'sample'``, what the release's evaluation does: its forward always samples). Sampled
noise is drawn per scene from ``fold_in(key(metrics.eval_seed), scene_index)`` (the row's position in the batch
when the batch has no ``scene_index``), so a scene gets the same noise in any batch, at any batch size, in every
evaluation; a batch that carries its own ``eps_tokens`` (B, num_latents, embed_dim) and ``eps_latent`` (B,
latent_dim) (e.g. the noises an official fixture recorded) is decoded with those. ``evaluation_convention``
states what the figures mean (radius, posterior, N, channels) for ``scene3d.evaluate``. Images are [input |
reconstruction] splat renders and ``write_outputs`` writes decoded scenes as INRIA PLY files, both of the
posterior mean.
"""
from __future__ import annotations

import os
import re
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scene3d import losses
from scene3d.tasks import base as task_base
from scene3d.core.config import model_section
from scene3d.core.dtypes import dtype as _dtype
from scene3d.data import gs_pipeline, splat_io
from scene3d.geometry import gaussians as gs
from scene3d.geometry import trajectories
from scene3d.metrics import gaussians as gmetrics
from scene3d.metrics.baselines import LinearBaselines
from scene3d.models import can3tok
from scene3d.render import splat

# config.model keys the task reads itself; every other key must be a Can3Tok architecture key.
_TASK_KEYS = frozenset({"name", "variant", "head_layout", "attn_impl", "scan", "remat", "dtype", "param_dtype"})
# Per-scene metric (``evaluate_examples``) -> the name of its mean over a batch or split.
_SPLIT_NAMES = {"l2": "l2_mean", "failure": "failure_rate"}
EVAL_POSTERIORS = ("mean", "sample")  # config.metrics.eval_posterior




def scene_index(scene_id) -> int:
    """A numeric id for a scene name (the jitted steps take numbers only): its trailing digits
    ('builtin/000031' -> 31), else a 31-bit CRC of the name."""
    s = scene_id.decode() if isinstance(scene_id, bytes) else str(scene_id)
    m = re.search(r"(\d+)$", s)
    if m and len(m.group(1)) < 10:
        return int(m.group(1))
    return zlib.crc32(s.encode()) & 0x7FFFFFFF


def _numeric_example(example: dict) -> dict:
    """Grain map: replace the string ``scene_id`` by an int32 ``scene_index`` and drop the other text fields (e.g. a
    scene's ``caption``: the VAE does not read it, and strings cannot enter a compiled step)."""
    out = {k: v for k, v in example.items()
           if k != "scene_id" and np.asarray(v).dtype.kind not in "USO"}
    if "scene_id" in example:
        out["scene_index"] = np.int32(scene_index(example["scene_id"]))
    return out


class AutoencodeTask:
    """Can3Tok VAE training (module docstring). Config fields: model, data.gaussians, loss, metrics, render."""

    def __init__(self, config):
        self.config = config
        mc = model_section(config, "autoencode", "can3tok", _TASK_KEYS | can3tok.CONFIG_KEYS)
        variant = mc.get("variant", "tiny")
        if variant not in can3tok.VARIANTS:
            raise ValueError(f"config.model.variant: unknown Can3Tok variant {variant!r} "
                             f"(known: {sorted(can3tok.VARIANTS)})")
        self.overrides = {k: mc[k] for k in mc.keys() if k in can3tok.CONFIG_KEYS}
        arch = dict(can3tok.VARIANTS[variant], **self.overrides)
        gcfg = config.data.get("gaussians") or {}
        sh_degree = int(gcfg.get("sh_degree", 0))
        self.channels = gs.num_channels(sh_degree)
        self.groups = {k: v for k, v in gs.channel_slices(sh_degree).items() if v.stop > v.start}
        rows_kind = gcfg.get("rows", "raw")
        if rows_kind not in gs_pipeline.ROWS:
            raise ValueError(f"config.data.gaussians.rows: expected one of {gs_pipeline.ROWS}, got {rows_kind!r}")
        self.offset = gs_pipeline.RELEASE_PREFIX if rows_kind == "release18" else 0
        if arch["input_offset"] != self.offset:
            raise ValueError(f"config.model.input_offset: the data rows (config.data.gaussians.rows={rows_kind!r}) "
                             f"have {self.offset} prefix columns before the packed channels; expected "
                             f"{self.offset}, got {arch['input_offset']}")
        if 3 + arch["point_feats"] != self.channels or arch["gs_channels"] != self.channels:
            raise ValueError(f"config.model: point_feats + 3 = {3 + arch['point_feats']} and gs_channels = "
                             f"{arch['gs_channels']} must both equal the {self.channels} raw channels of "
                             f"config.data.gaussians.sh_degree={sh_degree}")
        n_data = gcfg.get("num_gaussians")
        if n_data is not None and int(n_data) != arch["num_gaussians"]:
            raise ValueError(f"config.model.num_gaussians={arch['num_gaussians']} must equal "
                             f"config.data.gaussians.num_gaussians={n_data} (the decoder reconstructs the crop)")
        self.num_gaussians = arch["num_gaussians"]
        lc = config.get("loss") or {}
        self.recon_kind = lc.get("recon", "mse")
        losses.reconstruction_loss(jnp.zeros((1, 1, 1)), jnp.zeros((1, 1, 1)), self.recon_kind)  # validates
        self.beta = float(lc.get("beta", 1e-5))
        self.kl_anneal_steps = int(lc.get("kl_anneal_steps", 0) or 0)
        self.posterior_warmup_steps = int(lc.get("posterior_warmup_steps", 0) or 0)
        if self.posterior_warmup_steps < 0:
            raise ValueError(f"config.loss.posterior_warmup_steps: expected >= 0, got {self.posterior_warmup_steps}")
        metrics = config.get("metrics") or {}
        self.failure_threshold = float(metrics.get("failure_threshold", gmetrics.DEFAULT_FAILURE_THRESHOLD))
        self.eval_posterior = metrics.get("eval_posterior", "mean")
        if self.eval_posterior not in EVAL_POSTERIORS:
            raise ValueError(f"config.metrics.eval_posterior: expected one of {EVAL_POSTERIORS}, got "
                             f"{self.eval_posterior!r}")
        self.eval_seed = int(metrics.get("eval_seed", 0))
        self.baseline_examples = int(metrics.get("baselines", 0) or 0)
        self._baselines = None
        init = config.get("init") or {}
        self.head_bias_init = init.get("head_bias", "default")
        if self.head_bias_init not in ("default", "mean_scene"):
            raise ValueError(f"config.init.head_bias: expected 'default' or 'mean_scene', got {self.head_bias_init!r}")
        self.head_kernel_scale = float(init.get("head_kernel_scale", 1.0))
        self._decode_mode = nnx.jit(lambda m, x: m(x, sample_posterior=False)[0])

    # -- model -------------------------------------------------------------------------------------------------
    def build_model(self, rngs: nnx.Rngs) -> can3tok.Can3Tok:
        mc = self.config.model
        return can3tok.Can3Tok(variant=mc.get("variant", "tiny"), head_layout=mc.get("head_layout", "correct"),
                               attn_impl=mc.get("attn_impl", "xla"), scan=mc.get("scan", True),
                               remat=mc.get("remat", "none"),
                               dtype=_dtype(mc.get("dtype", "float32"), "config.model.dtype"),
                               param_dtype=_dtype(mc.get("param_dtype", "float32"), "config.model.param_dtype"),
                               rngs=rngs, **self.overrides)

    def data_transforms(self, split: str):
        return [_numeric_example]

    # -- losses / metrics --------------------------------------------------------------------------------------
    def _rows(self, batch) -> jax.Array:
        if "gaussians" not in batch:
            raise ValueError(f"autoencode batch: expected a 'gaussians' field (B, N, C), got {sorted(batch)}")
        rows = batch["gaussians"]
        want = (self.num_gaussians, self.offset + self.channels)
        if rows.ndim != 3 or tuple(rows.shape[1:]) != want:
            raise ValueError(f"autoencode batch['gaussians']: expected (B, {want[0]}, {want[1]}) (config.model."
                             f"num_gaussians x {self.offset} prefix columns + the raw channels of config.data."
                             f"gaussians.sh_degree), got {tuple(rows.shape)}")
        return rows.astype(jnp.float32)

    def target(self, rows):
        """The packed raw channels of (B, N, offset + C) rows: the reconstruction target."""
        return rows[..., self.offset:]

    def posterior_noise_scale(self, step):
        """min(1, step / posterior_warmup_steps) (1 without a warm-up or without a step)."""
        if self.posterior_warmup_steps <= 0 or step is None:
            return jnp.float32(1.0)
        return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(self.posterior_warmup_steps))

    def _recon_metrics(self, pred, target) -> dict:
        out = {"mse": losses.mse(pred, target)}
        out.update(gmetrics.gaussian_metrics(pred, target, self.failure_threshold))
        out.update({f"mse_{k}": v for k, v in losses.channel_group_mse(pred, target, self.groups).items()})
        return out

    def loss(self, model, batch, rng, step=None):
        rows = self._rows(batch)
        target = self.target(rows)
        noise = self.posterior_noise_scale(step)
        b, mc = rows.shape[0], model.config
        k1, k2 = jax.random.split(rng)
        eps_tokens = noise * jax.random.normal(k1, (b, mc["num_latents"], mc["embed_dim"]))
        eps_latent = noise * jax.random.normal(k2, (b, mc["latent_dim"]))
        pred, aux = model(rows, sample_posterior=True, eps_tokens=eps_tokens, eps_latent=eps_latent)
        recon = losses.reconstruction_loss(pred, target, self.recon_kind)
        kl = losses.kl_loss(aux["mean"], aux["logvar"])
        beta = losses.kl_weight(step, self.beta, self.kl_anneal_steps)
        total = recon + beta * kl
        metrics = {"recon": recon, "kl": kl, "kl_weight": beta, "posterior_noise": noise,
                   **self._recon_metrics(pred, target)}
        return total, metrics

    def eval_noise(self, batch, model_config: dict):
        """(eps_tokens (B, num_latents, embed_dim), eps_latent (B, latent_dim)) of a sampled evaluation: the
        batch's own ``eps_tokens`` / ``eps_latent`` when it carries both, else standard normal draws from the
        per-scene keys fold_in(key(eval_seed), scene_index) (module docstring)."""
        b = batch["gaussians"].shape[0]
        shapes = {"eps_tokens": (b, model_config["num_latents"], model_config["embed_dim"]),
                  "eps_latent": (b, model_config["latent_dim"])}
        if "eps_tokens" in batch and "eps_latent" in batch:
            for k, shape in shapes.items():
                if tuple(batch[k].shape) != shape:
                    raise ValueError(f"autoencode batch[{k!r}]: expected {shape}, got {tuple(batch[k].shape)}")
            return (jnp.asarray(batch["eps_tokens"], jnp.float32), jnp.asarray(batch["eps_latent"], jnp.float32))
        ids = batch["scene_index"] if "scene_index" in batch else jnp.arange(b)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(self.eval_seed), i))(jnp.asarray(ids, jnp.int32))
        eps_tokens = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shapes["eps_tokens"][1:]))(keys)
        eps_latent = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), shapes["eps_latent"][1:]))(keys)
        return eps_tokens, eps_latent

    def eval_reconstruction(self, model, batch):
        """(pred (B, N, C), aux, target (B, N, C)) of an evaluation: the decoded posterior mean, or a posterior
        sample (``eval_noise``) with ``metrics.eval_posterior='sample'``."""
        rows = self._rows(batch)
        if self.eval_posterior == "sample":
            eps_tokens, eps_latent = self.eval_noise(batch, model.config)
            pred, aux = model(rows, sample_posterior=True, eps_tokens=eps_tokens, eps_latent=eps_latent)
        else:
            pred, aux = model(rows, sample_posterior=False)
        return pred, aux, self.target(rows)

    # -- baselines ---------------------------------------------------------------------------------------------
    def training_examples(self, count: int) -> np.ndarray:
        """(count, N, C) targets of training examples made exactly as training makes them (the train split's
        transforms, random crops / rotations drawn from ``seed``-derived generators), cycling over the scenes."""
        return np.stack([np.asarray(ex["gaussians"], np.float32)[:, self.offset:]
                         for ex in task_base.training_examples(self.config, count)])

    def baselines(self) -> LinearBaselines | None:
        """The trivial predictors (``scene3d.metrics.baselines``) fitted once on ``metrics.baselines`` training
        examples, PCA with k = the model's latent floats; None when ``metrics.baselines`` is 0."""
        if self.baseline_examples <= 0 or self._baselines is False:
            return None
        if self._baselines is None:
            k = int(dict(can3tok.VARIANTS[self.config.model.get("variant", "tiny")], **self.overrides)["latent_dim"])
            try:
                examples = self.training_examples(self.baseline_examples)
            except (ValueError, OSError) as e:  # e.g. evaluating a run where its training data is not available
                logging.warning("config.metrics.baselines: no baselines, the training examples cannot be read: %s", e)
                self._baselines = False
                return None
            self._baselines = LinearBaselines.fit(examples, k)
        return self._baselines

    def restore_pretrained(self, variables):
        """Fresh runs with ``init.head_bias='mean_scene'``: the Gaussian head's output bias starts at the mean
        training scene (``baselines``' mean, or ``training_examples`` when they are off) and its kernel is scaled by
        ``init.head_kernel_scale``, so training starts from the mean-scene predictor instead of spending its first
        steps finding it."""
        if self.head_bias_init != "mean_scene":
            return variables
        fit = self.baselines()
        mean = fit.mean if fit is not None else self.training_examples(64).mean(0)
        head = variables["head_out"]
        bias = head["bias"]
        bias.value = jax.device_put(jnp.asarray(mean.reshape(-1), bias.value.dtype), bias.value.sharding)
        if self.head_kernel_scale != 1.0:
            head["kernel"].value = head["kernel"].value * self.head_kernel_scale
        return variables

    def evaluate_examples(self, model, batch, rng):
        """Per-scene metrics (B,) of the reconstruction of the posterior mean or of a posterior sample
        (``metrics.eval_posterior``; deterministic either way): ``l2`` (the paper's per-scene L2: the Frobenius
        norm of the scene's (N, C) raw-channel error), ``failure`` (1.0 where l2 exceeds
        ``metrics.failure_threshold``), ``mse`` and ``mse_<group>`` (per channel group), ``kl`` (summed over the
        latent, averaged over its other axes); with ``metrics.baselines`` also the per-scene L2 of the trivial
        predictors, ``baseline_mean_scene_l2`` and ``baseline_pca_l2`` (PCA with the model's latent floats)."""
        del rng
        pred, aux, target = self.eval_reconstruction(model, batch)
        l2 = gmetrics.per_scene_l2(pred, target)
        sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
        kl = losses.diagonal_gaussian_kl(aux["mean"], aux["logvar"])
        out = {"l2": l2, "failure": (l2 > self.failure_threshold).astype(jnp.float32),
               "mse": jnp.mean(sq, axis=(1, 2)), "kl": jnp.mean(kl.reshape(kl.shape[0], -1), axis=1)}
        out.update({f"mse_{k}": jnp.mean(sq[..., sl], axis=(1, 2)) for k, sl in self.groups.items()})
        fit = self.baselines()
        if fit is not None:
            out["baseline_mean_scene_l2"] = gmetrics.per_scene_l2(fit.predict_mean(target), target)
            out["baseline_pca_l2"] = gmetrics.per_scene_l2(fit.predict_pca(target), target)
        return out

    def summarize_examples(self, values: dict, batch_size: int) -> dict:
        """Split (or batch) figures from per-scene values (``evaluate_examples``) in data order: ``l2_mean``, the
        release's ``l2_batch`` over consecutive batches of ``batch_size`` scenes, ``failure_rate`` and the means of
        the other values."""
        out = {_SPLIT_NAMES.get(k, k): float(np.mean(v)) for k, v in values.items()}
        out["l2_batch"] = gmetrics.batch_l2_from_scenes(values["l2"], batch_size)
        return out

    def evaluation_convention(self, batch_size: int | None = None) -> dict:
        """What the evaluation figures mean, for reports (``scene3d.evaluate`` prints ``summary`` and stores the
        rest): the metric definitions, the posterior used, the data normalisation (radius), N and the channels."""
        g = gs_pipeline.GaussianConfig.from_config(self.config.data.get("gaussians"))
        posterior = ("posterior sample (z = mean + std * eps, per-scene noise from metrics.eval_seed="
                     f"{self.eval_seed})") if self.eval_posterior == "sample" else "posterior mean (z = mean)"
        batches = f"consecutive batches of {batch_size} scenes" if batch_size else "each evaluation batch"
        out = {
            "l2": "per-scene L2 = ||pred - target||_F over the scene's N x C raw channels (the paper's per-scene "
                  "error); l2_mean is its mean over the scenes",
            "failure_rate": f"share of scenes with per-scene L2 > {self.failure_threshold:g}",
            "l2_batch": f"the release's ||pred - target||_F over a batch / B, averaged over {batches}",
            "posterior": self.eval_posterior, "eval_seed": self.eval_seed if self.eval_posterior == "sample" else None,
            "radius": g.radius, "num_gaussians": self.num_gaussians, "channels": self.channels,
            "channel_groups": {k: [sl.start, sl.stop] for k, sl in self.groups.items()}, "rows": g.rows,
            "order": g.order, "failure_threshold": self.failure_threshold,
        }
        out["summary"] = (f"Can3Tok convention: {posterior}; per-scene L2 = ||pred - target||_F over N="
                          f"{self.num_gaussians} Gaussians x C={self.channels} raw (pre-activation) channels "
                          f"({', '.join(self.groups)}) of crops normalised to radius {g.radius:g} (farthest Gaussian "
                          f"at radius / 1.1); failure: L2 > {self.failure_threshold:g}; l2_batch: the release's "
                          f"||.||_F / B over {batches}")
        return out

    def evaluate(self, model, batch, rng):
        """Metrics of the reconstruction (``metrics.eval_posterior``; deterministic) of one eval batch (the means of
        ``evaluate_examples`` and the batch figure ``l2_batch``)."""
        ex = self.evaluate_examples(model, batch, rng)
        out = {_SPLIT_NAMES.get(k, k): jnp.mean(v) for k, v in ex.items()}
        out["l2_batch"] = jnp.sqrt(jnp.sum(jnp.square(ex["l2"]))) / ex["l2"].shape[0]
        return out

    # -- files and figures -------------------------------------------------------------------------------------
    def reconstruct(self, model, rows) -> np.ndarray:
        """(B, N, offset + C) rows -> (B, N, C) float32 numpy posterior-mean reconstructions."""
        return np.asarray(jax.device_get(self._decode_mode(model, rows)), np.float32)

    def images(self, model, batch, rng):
        """``recon_<i>``: [input | reconstruction] renders of eval scene i from ``render.num_cameras`` cameras."""
        rc = self.config.get("render") or {}
        k = min(int(rc.get("num_scenes", 2)), int(batch["gaussians"].shape[0]))
        if k <= 0:
            return {}
        rows = np.asarray(jax.device_get(batch["gaussians"]), np.float32)[:k]
        rec = self.reconstruct(model, jnp.asarray(rows))
        rows = self.target(rows)
        cams = trajectories.orbit_cameras(int(rc.get("num_cameras", 3)), int(rc.get("size", 128)),
                                          distance=float(rc.get("distance", 2.6)),
                                          elevation_deg=float(rc.get("elevation_deg", 35.0)),
                                          fov_deg=float(rc.get("fov_deg", 45.0)))
        return {f"recon_{i}": splat.render_side_by_side(gs.unpack(rows[i]), gs.unpack(rec[i]), cams)
                for i in range(k)}

    def write_outputs(self, model, batch, rng, out_dir):
        """Write ``recon_<i>.ply`` and ``input_<i>.ply`` (INRIA layout: zero normals, SH bands zero-padded to
        degree 3) for the first ``num_output_scenes`` scenes, mapped back to the scene's world frame."""
        k = min(int(self.config.get("num_output_scenes", 2)), int(batch["gaussians"].shape[0]))
        if k <= 0:
            return
        os.makedirs(out_dir, exist_ok=True)
        host = {key: np.asarray(jax.device_get(batch[key])) for key in ("gaussians", "center", "scale", "rotation",
                                                                      "scene_index") if key in batch}
        rows = host["gaussians"][:k].astype(np.float32)
        rec = self.reconstruct(model, jnp.asarray(rows))
        rows = self.target(rows)
        for i in range(k):
            sid = int(host["scene_index"][i]) if "scene_index" in host else -1
            frame = {key: host[key][i] for key in ("center", "scale", "rotation") if key in host}
            for name, raw in (("recon", rec[i]), ("input", rows[i])):
                splat_io.write_ply(os.path.join(out_dir, f"{name}_{i}.ply"), to_world(raw, **frame),
                                   comments=[f"scene3d can3tok {name}", f"scene_index {sid}"])


def to_world(raw, center=None, scale=None, rotation=None) -> gs.Gaussians:
    """One scene's packed raw channels (N, C) in the normalised frame of an example (its ``center``, ``scale`` and
    augmentation ``rotation``; each optional) -> Gaussians in the scene's world frame, in the layout 3DGS viewers
    expect (float32, zero normals, f_rest zero-padded to SH degree 3)."""
    g = gs.unpack(np.asarray(raw, np.float64))
    if rotation is not None:
        g = gs.rotate_gaussians(g, np.asarray(rotation, np.float64).T)
    if center is not None and scale is not None:
        g = gs.denormalise_scene(g, gs.SceneTransform(np.asarray(center, np.float64), float(scale)))
    return _viewer_layout(g)


def _viewer_layout(g: gs.Gaussians) -> gs.Gaussians:
    """float32, zero normals, f_rest zero-padded to SH degree 3: the layout 3DGS viewers expect."""
    n = g.xyz.shape[0]
    k = gs.num_rest_coeffs(3)
    rest = np.zeros((n, k, 3), np.float32)
    if g.f_rest is not None:
        rest[:, :g.f_rest.shape[1]] = g.f_rest
    g = g._replace(f_rest=rest, normals=np.zeros((n, 3), np.float32))
    return gs.Gaussians(*(None if a is None else np.asarray(a, np.float32) for a in g))
