"""The FID Inception-v3 weights file -> :class:`~scene3d.models.inception.FIDInception` (the table and the loader).

The file is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the TensorFlow FID graph ported to PyTorch; the
same weights torchmetrics' ``FeatureExtractorInceptionV3`` uses): a state_dict of torchvision's ``Inception3`` with
the FID blocks (``scene3d.models.inception``), keys ``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.
running_mean``, ... plus the 1008-way ``fc`` (not used: ignored and reported). The state_dict of pytorch-fid's own
``InceptionV3`` wrapper (``blocks.{i}.{j}.*``, the pool-feature network as ``InceptionV3([3])`` holds it) is read
too: its keys are renamed to torchvision's first. BatchNorm's ``num_batches_tracked`` counters are dropped.

Our module tree uses torchvision's names, so the table is derived from our variable paths: ``conv.kernel`` (kh, kw,
in, out) <-> ``conv.weight`` (out, in, kh, kw), ``bn.scale`` / ``bias`` / ``mean`` / ``var`` <-> ``bn.weight`` /
``bias`` / ``running_mean`` / ``running_var``. ``load(path)`` builds the network abstractly and fills it from the
file (nothing random is computed, nothing downloads); every missing key or shape mismatch is named in one
ValueError.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np
from flax import nnx

from scene3d.convert import engine
from scene3d.models.inception import FIDInception

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}

# pytorch-fid's InceptionV3 wrapper: blocks.{i}.{j} -> torchvision's names (the max pools hold no weights).
WRAPPER_BLOCKS = (("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"), ("Conv2d_3b_1x1", "Conv2d_4a_3x3"),
                  ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
                  ("Mixed_7a", "Mixed_7b", "Mixed_7c"))


def torch_key(path: tuple, conv_name: str = "conv") -> str:
    """Our variable path -> the torch key (``conv`` renamed to ``conv_name``: pytorch-i3d calls it ``conv3d``)."""
    parts = [str(p) for p in path[:-1]]
    if parts and parts[-1] == "conv":
        parts[-1] = conv_name
    return ".".join(parts + [_LEAF[path[-1]]])


def table_of(layout: engine.Layout, model, conv_name: str = "conv") -> list[engine.Entry]:
    """One entry per variable: kernels of rank >= 4 as torch convs, everything else copied."""
    return [engine.entry(torch_key(p, conv_name), p, engine.CONV if len(a.shape) >= 4 else engine.COPY)
            for p, a in layout.flat(model).items()]


def build(layout: engine.Layout, make, sd: Mapping[str, np.ndarray], name: str):
    """(``make()`` built abstractly holding ``sd``, report): ``engine.Layout.build`` for a state_dict already read
    (and cleaned) here, errors naming the file ``name``."""
    abstract = nnx.eval_shape(make)
    state, report = layout.to_state(abstract, sd, name=name)
    graphdef, _, rest = nnx.split(abstract, layout.variables, ...)
    return nnx.merge(graphdef, state, rest), report


def drop_counters(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state_dict without BatchNorm's ``num_batches_tracked`` (training bookkeeping)."""
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


class InceptionLayout(engine.Layout):
    name = "official"
    what = "FID Inception-v3"
    anchor = "Conv2d_1a_3x3.conv.weight"
    anchor_required = True
    ignore = {"fc.": "the 1008-way classifier (FID / KID use the pool features)",
              "AuxLogits.": "the auxiliary classifier"}
    variables = (nnx.Param, nnx.BatchStat)

    def table(self, model) -> list[engine.Entry]:
        return table_of(self, model)


LAYOUT = InceptionLayout()


def from_wrapper_keys(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """pytorch-fid ``InceptionV3`` wrapper keys (``[prefix]blocks.{i}.{j}.rest``) -> torchvision's; other keys kept."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"(.*?)blocks\.(\d+)\.(\d+)\.(.*)", k)
        if m and int(m.group(2)) < len(WRAPPER_BLOCKS) and int(m.group(3)) < len(WRAPPER_BLOCKS[int(m.group(2))]):
            k = f"{m.group(1)}{WRAPPER_BLOCKS[int(m.group(2))][int(m.group(3))]}.{m.group(4)}"
        out[k] = v
    return out


def load(weights: str | os.PathLike | Mapping[str, np.ndarray]) -> tuple[FIDInception, engine.Report]:
    """(the FID Inception holding ``weights``: a file or a state_dict, module docstring; its import report)."""
    sd, name = engine.read(weights)
    sd = from_wrapper_keys(drop_counters(sd))
    return build(LAYOUT, lambda: FIDInception(rngs=nnx.Rngs(0)), sd, name)
