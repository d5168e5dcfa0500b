"""The conversion engine on a tiny hand-made table: both directions against torch-layout arrays written by hand,
layer stacking, the report (missing / unexpected / shape-mismatched keys, ignored, optional, computed, prefix),
every transform kind's two directions, and state_dict files."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from scene3d.convert import engine

L, D, H = 2, 4, 2  # layers, width, heads of the fused-per-head kv
FIXED = np.arange(6, dtype=np.float32).reshape(2, 3)  # a table the model computes (like SceneTok's RoPE buffers)


class _KB(nnx.Module):
    def __init__(self, key, din, dout):
        k1, k2 = jax.random.split(key)
        self.kernel = nnx.Param(jax.random.normal(k1, (L, din, dout)))
        self.bias = nnx.Param(jax.random.normal(k2, (L, dout)))


class _Layers(nnx.Module):
    def __init__(self, key):
        keys = jax.random.split(key, 5)
        self.q, self.k, self.v = _KB(keys[0], D, D), _KB(keys[1], D, D), _KB(keys[2], D, 6)  # v: unequal rows
        self.k2, self.v2 = _KB(keys[3], D, D), _KB(keys[4], D, D)


class Toy(nnx.Module):
    def __init__(self, seed=0):
        rngs = nnx.Rngs(seed)
        self.proj = nnx.Linear(3, D, rngs=rngs)
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.norm.scale.set_value(jax.random.normal(rngs.params(), (D,)))
        self.conv = nnx.Conv(2, D, (3, 3), rngs=rngs)
        self.tok = nnx.Param(jax.random.normal(rngs.params(), (5, D)))
        self.extra = nnx.Param(jnp.full((D,), 7.0))
        self.layers = _Layers(rngs.params())


def _check_fixed(tensors, shapes):
    if not np.array_equal(tensors[0], FIXED):
        raise ValueError("table differs from the computed one")
    return []


class ToyLayout(engine.Layout):
    what = "Toy"
    prefix = "model."
    ignore = {"aux.": "training-only"}
    passthrough = True

    def table(self, model):
        out = engine.linear("proj", ("proj",)) + engine.norm("ln", ("norm",))
        out += engine.linear("conv", ("conv",), kind=engine.CONV)
        out.append(engine.entry("tok", ("tok",), engine.reshape(lambda s: (1,) + s)))
        out.append(engine.entry("extra_tok", ("extra",), optional=True))
        out.append(engine.Entry(("table",), (), engine.Kind("fixed", lambda a, xp: [FIXED], _check_fixed)))
        for i in range(L):
            out += engine.fused(f"blocks.{i}.qkv", ("layers",), "qkv", (i,))
            out += engine.fused(f"blocks.{i}.kv", ("layers",), ("k2", "v2"), (i,), num_heads=H)
        return out


LAYOUT = ToyLayout()


def _arrays(m: Toy) -> dict:
    return {k: np.asarray(v) for k, v in engine.flatten(nnx.to_pure_dict(nnx.state(m, nnx.Param))).items()}


def reference(m: Toy) -> dict[str, np.ndarray]:
    """The official (torch-layout) state_dict of ``m``, written by hand."""
    a = _arrays(m)
    sd = {"proj.weight": a["proj", "kernel"].T, "proj.bias": a["proj", "bias"], "ln.weight": a["norm", "scale"],
          "ln.bias": a["norm", "bias"], "conv.weight": a["conv", "kernel"].transpose(3, 2, 0, 1),
          "conv.bias": a["conv", "bias"], "tok": a["tok",][None], "extra_tok": a["extra",], "table": FIXED}
    d = D // H
    for i in range(L):
        w = [a["layers", p, "kernel"][i].T for p in "qkv"]  # torch Linear weights (out, in)
        sd[f"blocks.{i}.qkv.weight"] = np.concatenate(w)
        sd[f"blocks.{i}.qkv.bias"] = np.concatenate([a["layers", p, "bias"][i] for p in "qkv"])
        rows, biases = [], []
        for h in range(H):  # per head: its k rows, then its v rows
            for p in ("k2", "v2"):
                rows.append(a["layers", p, "kernel"][i].T[h * d:(h + 1) * d])
                biases.append(a["layers", p, "bias"][i][h * d:(h + 1) * d])
        sd[f"blocks.{i}.kv.weight"], sd[f"blocks.{i}.kv.bias"] = np.concatenate(rows), np.concatenate(biases)
    return sd


@pytest.fixture(scope="module")
def toy():
    m = Toy()
    return m, reference(m)


def test_export_is_the_hand_written_state_dict(toy):
    m, ref = toy
    out = LAYOUT.export(m)
    assert sorted(out) == sorted("model." + k for k in ref)
    for k, v in ref.items():
        assert out["model." + k].dtype == np.float32
        np.testing.assert_array_equal(out["model." + k], v, err_msg=k)
    # the torch conv with the exported weight is our conv
    x = np.random.default_rng(0).normal(size=(1, 5, 6, 2)).astype(np.float32)
    got = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(out["model.conv.weight"]),
                   torch.from_numpy(out["model.conv.bias"]), padding=1).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), np.asarray(m.conv(jnp.asarray(x))), atol=1e-5)
    # abstract in, ShapeDtypeStructs out, nothing allocated
    abstract = nnx.eval_shape(Toy)
    shapes = {k: v for k, v in LAYOUT.export(abstract, prefix="").items()}
    assert all(isinstance(v, jax.ShapeDtypeStruct) and v.dtype == jnp.float32 for v in shapes.values())
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in ref.items()}
    assert LAYOUT.shapes(abstract) == {k: v.shape for k, v in ref.items()}


def test_import_stacks_layers_and_reports(toy):
    m, ref = toy
    sd = {"model." + k: v for k, v in ref.items()}
    sd["model.aux.lpips"] = np.ones(3, np.float32)
    sd["other.head"] = np.ones(2, np.float32)
    state, report = LAYOUT.to_state(nnx.eval_shape(lambda: Toy(seed=1)), sd)
    got = engine.flatten(nnx.to_pure_dict(state))
    for p, want in _arrays(m).items():
        np.testing.assert_array_equal(np.asarray(got[p]), want, err_msg=str(p))
    assert report.prefix == "model."
    assert sorted(report.consumed) == sorted("model." + k for k in ref)
    assert report.ignored == {"model.aux.lpips": "training-only", "other.head": "outside the key prefix 'model.'"}
    assert sorted(report.passthrough) == ["aux.lpips", "table"] and report.initialised == {}
    # the same file without prefix, into a concrete model in place
    fresh = Toy(seed=2)
    LAYOUT.import_into(fresh, ref)
    for p, want in _arrays(m).items():
        np.testing.assert_array_equal(_arrays(fresh)[p], want, err_msg=str(p))


def test_errors_name_every_missing_unexpected_and_mismatched_key(toy):
    m, ref = toy
    bad = dict(ref, **{"proj.weight": np.zeros((3, D), np.float32), "blocks.9.qkv.weight": np.zeros(1)})
    del bad["blocks.1.kv.weight"], bad["ln.bias"]
    with pytest.raises(ValueError) as e:
        LAYOUT.to_state(m, bad, name="toy.safetensors")
    msg = str(e.value)
    assert msg.startswith("toy.safetensors: missing 2 keys for this Toy configuration: ")
    assert f"blocks.1.kv.weight (expected shape {(2 * D, D)})" in msg and f"ln.bias (expected shape {(D,)})" in msg
    assert f"shape mismatch for proj.weight: expected {(D, 3)}, got {(3, D)}" in msg
    assert "1 unexpected keys (this Toy configuration does not use: ['blocks.9.qkv.weight']" in msg
    # strict=False: unexpected keys are reported and kept; the missing / mismatched ones still fail
    with pytest.raises(ValueError, match="missing 2 keys"):
        LAYOUT.to_state(m, bad, strict=False)
    ok = dict(ref, **{"blocks.9.qkv.weight": np.zeros(1, np.float32)})
    _, report = LAYOUT.to_state(m, ok, strict=False)
    assert report.ignored == {"blocks.9.qkv.weight": "not used by this Toy configuration"}
    # an optional key may be absent: the variable keeps the model's value (zeros for an abstract model)
    no_extra = {k: v for k, v in ref.items() if k != "extra_tok"}
    fresh = Toy(seed=3)
    state, report = LAYOUT.to_state(fresh, no_extra)
    assert list(report.initialised) == ["extra_tok"]
    np.testing.assert_array_equal(np.asarray(state["extra"][...]), np.full(D, 7.0))
    state, _ = LAYOUT.to_state(nnx.eval_shape(Toy), no_extra)
    np.testing.assert_array_equal(np.asarray(state["extra"][...]), np.zeros(D))
    # computed tensors are checked
    with pytest.raises(ValueError, match=re.escape("toy: table differs from the computed one")):
        LAYOUT.to_state(m, dict(ref, table=FIXED + 1), name="toy")


def test_tables_must_cover_the_model(toy):
    m, ref = toy
    short = [e for e in LAYOUT.table(m) if e.keys != ("tok",)]
    with pytest.raises(ValueError, match=r"does not match Toy: .*its variables \['tok'\] have no official tensor"):
        engine.check_table(short, engine.flatten(nnx.to_pure_dict(nnx.state(m, nnx.Param))), "Toy")


@pytest.mark.parametrize("kind,shapes", [
    (engine.COPY, [(3, 4)]), (engine.LINEAR, [(3, 5)]), (engine.CONV, [(3, 2, 4, 5)]), (engine.CONV, [(3, 4, 5)]),
    (engine.CONV1X1, [(4, 6)]), (engine.ROWS, [(4, 4), (4, 2), (4, 6)]), (engine.ROWS_BIAS, [(4,), (2,), (6,)]),
    (engine.heads(3), [(5, 6), (5, 6), (5, 6)]), (engine.heads_bias(3), [(6,), (6,)]), (engine.patch(3), [(48, 8)]),
    (engine.reshape(lambda s: (1, s[0] * s[1], s[2])), [(3, 3, 4)]),
])
def test_every_kind_inverts_itself(kind, shapes):
    rng = np.random.default_rng(0)
    ours = [rng.normal(size=s).astype(np.float32) for s in shapes]
    official = kind.to_official(ours, np)
    traced = jax.eval_shape(lambda a: kind.to_official(a, jnp), [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes])
    assert [t.shape for t in traced] == [np.shape(t) for t in official]
    back = kind.to_ours([np.asarray(t) for t in official], shapes)
    assert len(back) == len(ours)
    for a, b in zip(back, ours):
        np.testing.assert_array_equal(a, b)
    if kind is engine.CONV1X1:
        assert official[0].shape == (6, 4, 1, 1)
    if kind.name == "patch3":  # rows (py, px, c) of our kernel = torch weight[d, c, py, px]
        np.testing.assert_array_equal(official[0][5, 2, 1, 3], ours[0][(1 * 4 + 3) * 3 + 2, 5])


def test_state_dict_files(tmp_path):
    sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([1, 2], np.int64)}
    engine.save_safetensors(tmp_path / "w.safetensors", sd, {"part": "x"})
    back = engine.load_state_dict(tmp_path / "w.safetensors")
    assert sorted(back) == ["a", "n"] and back["n"].dtype == np.int64
    np.testing.assert_array_equal(back["a"], sd["a"])
    torch.save({"state_dict": {"m.a": torch.ones(2, dtype=torch.bfloat16), "m.b": torch.zeros(1)}, "epoch": 3},
               tmp_path / "last.ckpt")
    lightning = engine.load_state_dict(tmp_path / "last.ckpt", prefix="m.a")
    assert list(lightning) == ["m.a"] and lightning["m.a"].dtype == np.float32
    from safetensors.torch import save_file
    (tmp_path / "shards").mkdir()
    save_file({"w": torch.full((2,), 1.5, dtype=torch.bfloat16)}, tmp_path / "shards" / "x.safetensors")
    shards = engine.load_state_dict(tmp_path / "shards")  # a folder of shards; bfloat16 read as float32
    np.testing.assert_array_equal(shards["w"], np.full(2, 1.5, np.float32))
    with pytest.raises(ValueError, match="unknown state_dict format"):
        (tmp_path / "w.npz").write_bytes(b"")
        engine.load_state_dict(tmp_path / "w.npz")
