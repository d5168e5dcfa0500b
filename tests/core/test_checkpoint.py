import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from scene3d.core.checkpoint import Checkpointer


def _mesh(shape, names=("data", "fsdp")):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=jax.devices()[:int(np.prod(shape))])


SPECS = {"w": P("data", "fsdp"), "b": P("fsdp"), "emb": P(None, "data"), "step": P(), "rng": P()}


def _host_tree(seed=0):
    r = np.random.default_rng(seed)
    return {"w": r.standard_normal((8, 16)).astype(np.float32),
            "b": r.standard_normal((16,)).astype(jnp.bfloat16),
            "emb": r.integers(-100, 100, (4, 8)).astype(np.int32),
            "step": np.int32(17),
            "rng": np.asarray(jax.random.key_data(jax.random.key(seed)))}


def _place(host, mesh):
    return {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in host.items()}


def _abstract(host, mesh):
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, SPECS[k])) for k, v in host.items()}


def _assert_equal(restored, host):
    assert set(restored) == set(host)
    for k, v in host.items():
        got = np.asarray(restored[k])
        assert got.dtype == np.asarray(v).dtype, k
        np.testing.assert_array_equal(got, np.asarray(v), err_msg=k)


def test_roundtrip_bit_exact_and_meta(tmp_path):
    mesh = _mesh((2, 4))
    host = _host_tree()
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.latest_step() is None and ck.all_steps() == []
        assert ck.save(5, _place(host, mesh), meta={"step": 5, "loss": np.float32(0.5), "tag": "x"})
        ck.wait()
        state, meta = ck.restore(abstract_state=_abstract(host, mesh))
    _assert_equal(state, host)
    assert meta == {"step": 5, "loss": 0.5, "tag": "x"}
    assert state["w"].sharding == NamedSharding(mesh, SPECS["w"])


@pytest.mark.parametrize("target", ["8x1", "single"])
def test_restore_on_a_different_mesh(tmp_path, target):
    host = _host_tree(1)
    with Checkpointer(tmp_path) as ck:
        ck.save(1, _place(host, _mesh((2, 4))))
    ck = Checkpointer(tmp_path)  # fresh manager, as after a restart
    if target == "8x1":
        mesh = _mesh((8, 1))
        abstract = _abstract(host, mesh)
    else:
        dev = jax.devices()[3]
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=jax.sharding.SingleDeviceSharding(dev))
                    for k, v in host.items()}
    state, _ = ck.restore(1, abstract_state=abstract)
    ck.close()
    _assert_equal(state, host)
    for k in host:
        assert state[k].sharding == abstract[k].sharding, k


def test_nnx_state_roundtrip(tmp_path):
    model = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    tree = {"params": state, "step": jnp.int32(3)}
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(3, tree)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
        restored, _ = ck.restore(3, abstract_state=abstract)
    assert isinstance(restored["params"], nnx.State)
    np.testing.assert_array_equal(restored["params"]["kernel"].value, state["kernel"].value)
    np.testing.assert_array_equal(restored["params"]["bias"].value, state["bias"].value)


def test_keep_n_async_and_interval(tmp_path):
    host = {"x": np.arange(6, dtype=np.float32)}
    ck = Checkpointer(tmp_path, keep=2, async_save=True)
    for step in range(1, 6):
        assert ck.save(step, {"x": jnp.asarray(host["x"] + step)})
    ck.wait()
    assert ck.all_steps() == [4, 5]
    assert ck.latest_step() == 5
    state, _ = ck.restore(4, abstract_state={"x": jax.ShapeDtypeStruct((6,), jnp.float32)})
    np.testing.assert_array_equal(state["x"], host["x"] + 4)
    with pytest.raises(ValueError, match="already exists"):
        ck.save(5, {"x": jnp.zeros(6)}, force=True)
    ck.close()
    assert sorted(os.listdir(tmp_path)) == ["4", "5"]

    ck = Checkpointer(tmp_path / "iv", keep=None, save_interval_steps=3)
    saved = [s for s in range(1, 8) if ck.save(s, {"x": jnp.zeros(2)})]
    assert ck.save(8, {"x": jnp.zeros(2)}, force=True)
    ck.close()
    assert saved == [1, 3, 6]  # orbax always takes the first save, then multiples of the interval
    assert ck.all_steps() == [1, 3, 6, 8]


def test_partial_checkpoint_is_never_latest(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(2, {"x": jnp.ones(3)})
    # What an interrupted save leaves behind: orbax's temporary folder for a newer step.
    tmp = tmp_path / "7.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\0" * 10)
    ck = Checkpointer(tmp_path)
    assert ck.latest_step() == 2 and ck.all_steps() == [2]
    state, _ = ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((3,), jnp.float32)})
    np.testing.assert_array_equal(state["x"], np.ones(3))
    ck.save(7, {"x": jnp.full(3, 7.0)})  # the leftover is replaced by a complete save
    ck.close()
    assert sorted(os.listdir(tmp_path)) == ["2", "7"]


def test_mismatched_tree_names_the_keys(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, {"params": {"a": jnp.zeros(3), "b": jnp.zeros(2)}, "step": jnp.int32(0)})
        abstract = {"params": {"a": jax.ShapeDtypeStruct((4,), jnp.float32), "c": jax.ShapeDtypeStruct((2,), jnp.float32)},
                    "step": jax.ShapeDtypeStruct((), jnp.int32)}
        with pytest.raises(ValueError) as e:
            ck.restore(1, abstract_state=abstract)
    msg = str(e.value)
    assert "missing in checkpoint (1): params/c" in msg
    assert "unexpected in checkpoint (1): params/b" in msg
    assert "params/a: saved (3,), expected (4,)" in msg


def test_missing_step_and_empty_dir(tmp_path):
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ck.restore(abstract_state={})
        ck.save(1, {"x": jnp.zeros(1)})
        with pytest.raises(FileNotFoundError, match=r"step 9 not found.*\[1\]"):
            ck.restore(9, abstract_state={"x": jax.ShapeDtypeStruct((1,), jnp.float32)})


def test_typed_prng_keys_are_rejected_clearly(tmp_path):
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(ValueError, match="key_data"):
            ck.save(1, {"rng": jax.random.key(0)})


def _dataset():
    return grain.MapDataset.range(40).shuffle(seed=3).map(lambda x: x * 10).batch(3)


def _dataloader():
    sampler = grain.samplers.IndexSampler(num_records=40, shuffle=True, seed=5, num_epochs=2,
                                          shard_options=grain.sharding.NoSharding())
    return grain.DataLoader(data_source=grain.sources.RangeDataSource(0, 40, 1), sampler=sampler, worker_count=0)


class _Counter:
    """Minimal non-grain iterator with JSON state."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return self.i

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


@pytest.mark.parametrize("kind", ["dataset", "dataloader", "custom"])
def test_data_iterator_resumes_at_same_element(tmp_path, kind):
    make = {"dataset": lambda: iter(_dataset().to_iter_dataset()),
            "dataloader": lambda: iter(_dataloader()),
            "custom": _Counter}[kind]
    it = make()
    for _ in range(5):
        next(it)
    with Checkpointer(tmp_path) as ck:
        ck.save(5, {"x": jnp.zeros(1)}, data_iter=it)
        # The iterator moves on while the save completes: the checkpoint must hold the position at save time.
        expected = [np.asarray(next(it)).tolist() for _ in range(4)]
    fresh = make()
    ck = Checkpointer(tmp_path)
    ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((1,), jnp.float32)}, data_iter=fresh)
    ck.close()
    got = [np.asarray(next(fresh)).tolist() for _ in range(4)]
    assert got == expected
    assert got != [np.asarray(next(make())).tolist() for _ in range(1)] * 4


def test_restore_data_iter_without_saved_state_errors(tmp_path):
    with Checkpointer(tmp_path) as ck:
        ck.save(1, {"x": jnp.zeros(1)})
        with pytest.raises(ValueError, match="no data iterator state"):
            ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((1,), jnp.float32)}, data_iter=_Counter())
        _, meta = ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((1,), jnp.float32)})
    assert meta == {}


def test_restore_without_saved_data_state_when_optional(tmp_path):
    """require_data=False (the trainer resuming imported weights): weights restored, the iterator left at its
    start."""
    with Checkpointer(tmp_path) as ck:
        ck.save(1, {"x": jnp.full(1, 3.0)})
        it = _Counter()
        state, _ = ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((1,), jnp.float32)}, data_iter=it,
                              require_data=False)
    assert float(state["x"][0]) == 3.0 and it.i == 0 and next(it) == 1
