"""FLOPs of a JAX function counted on its jaxpr, loops multiplied by their trip counts: the model FLOPs of MFU.

XLA's ``cost_analysis()`` counts a ``while`` loop's body once, so a model whose layers are a ``lax.scan`` (``nn.Stack``
with ``scan=True``) reports about 1/depth of its arithmetic. This counter walks the jaxpr instead, where every scan
still carries its ``length``:

- ``dot_general``: 2 x output elements x contracted size; ``conv_general_dilated``: 2 x output elements x kernel
  elements per output feature (multiply-adds count 2, as XLA counts them);
- elementwise arithmetic, comparisons, selects and conversions: 1 per output element; reductions: 1 per reduced
  input element; ``exp`` / ``log`` / ``tanh`` / ``sqrt`` / ``erf`` ... are counted apart as transcendentals (as
  XLA's cost analysis does); data movement (reshape, transpose, broadcast, slices, gathers, copies) is free;
- ``scan``: its body x ``length``; ``cond``: the most expensive branch; ``while``: body and condition once (the trip
  count is not known before running; ``while_loops`` says how many were met); ``shard_map``: its per-shard body x
  the number of shards; ``pallas_call``: its ``cost_estimate`` when it has one (else uncounted); any other primitive
  holding a jaxpr (jit, remat, custom_jvp / custom_vjp calls): that jaxpr once;
- anything else is free and listed in ``uncounted`` (primitive -> elements), so nothing is dropped silently.

The result matches XLA's own count of the same program with its loops unrolled to within a few percent
(``tests/test_flops.py``) and is the same whether the layers are scanned or not. ``benchmarks/train_step.py`` and
``benchmarks/gpu_check.py`` (part c) take ``model_flops`` from :func:`step_flops` (through
``gpu_check._model_flops``) and correct XLA's ``compiled_flops`` by :func:`loop_factor`.
"""
from __future__ import annotations

import collections
import dataclasses
import math

ELEMENTWISE = frozenset("""
    add add_any sub mul div rem neg abs max min sign floor ceil round nextafter select_n clamp and or not xor
    eq ne lt le gt ge convert_element_type integer_pow square reduce_precision is_finite copysign
    shift_left shift_right_logical shift_right_arithmetic population_count
""".split())
TRANSCENDENTAL = frozenset("""
    exp exp2 expm1 log log1p pow sqrt rsqrt cbrt sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh
    logistic erf erfc erf_inv lgamma digamma igamma igammac igamma_grad_a random_gamma_grad bessel_i0e bessel_i1e
""".split())
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin "
                       "cumsum cumprod cummax cummin cumlogsumexp reduce_precision_sum".split())
FREE = frozenset("""
    reshape transpose broadcast_in_dim squeeze expand_dims slice dynamic_slice dynamic_update_slice gather concatenate
    pad rev iota copy copy_p device_put sharding_constraint mesh_cast reshard pvary psum_invariant stop_gradient
    bitcast_convert_type select_and_gather_add random_seed random_wrap random_unwrap random_bits random_fold_in
    random_split threefry2x32 split sort optimization_barrier axis_index with_sharding_constraint empty
""".split())


@dataclasses.dataclass
class FlopCount:
    flops: float = 0.0
    transcendentals: float = 0.0
    by_primitive: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    uncounted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    while_loops: int = 0

    def add(self, other: "FlopCount", times: float = 1.0) -> None:
        self.flops += times * other.flops
        self.transcendentals += times * other.transcendentals
        for k, v in other.by_primitive.items():
            self.by_primitive[k] += times * v
        for k, v in other.uncounted.items():
            self.uncounted[k] += times * v
        self.while_loops += other.while_loops


def _size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ()) or ()))


def _jaxprs(value):
    """The (closed) jaxprs inside an equation parameter (a jaxpr, or a tuple of them such as cond's branches)."""
    from jax.extend import core
    if isinstance(value, core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _jaxprs(v)


def _eqn_flops(eqn, loops: bool) -> FlopCount:
    name = eqn.primitive.name
    out = sum(_size(v.aval) for v in eqn.outvars)
    c = FlopCount()
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        k = math.prod(eqn.invars[0].aval.shape[d] for d in lhs_contract)
        c.flops = 2.0 * out * k
    elif name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
        c.flops = 2.0 * out * math.prod(rhs) / rhs[out_feature_dim]
    elif name in ELEMENTWISE:
        c.flops = float(out)
    elif name in TRANSCENDENTAL:
        c.transcendentals = float(out)
    elif name in REDUCTIONS:
        c.flops = float(max(_size(eqn.invars[0].aval) - out, 0)) if not name.startswith("cum") else float(out)
    elif name == "scan":
        c.add(count_jaxpr(eqn.params["jaxpr"].jaxpr, loops=loops), times=int(eqn.params["length"]) if loops else 1)
        return c
    elif name == "cond":
        branches = [count_jaxpr(j, loops=loops) for j in _jaxprs(eqn.params["branches"])]
        best = max(branches, key=lambda b: b.flops)
        c.add(best)
        return c
    elif name == "while":
        c.add(count_jaxpr(eqn.params["body_jaxpr"].jaxpr, loops=loops))
        c.add(count_jaxpr(eqn.params["cond_jaxpr"].jaxpr, loops=loops))
        c.while_loops += 1
        return c
    elif name == "shard_map":
        mesh = eqn.params["mesh"]
        axes = eqn.params.get("newly_manual_axes") or eqn.params.get("manual_axes") or tuple(mesh.axis_names)
        c.add(count_jaxpr(eqn.params["jaxpr"], loops=loops), times=math.prod(mesh.shape[a] for a in axes))
        return c
    elif name == "pallas_call":
        est = eqn.params.get("cost_estimate")
        if est is not None:
            c.flops, c.transcendentals = float(est.flops), float(est.transcendentals)
        else:
            c.uncounted[name] += out
        return c
    else:
        inner = [j for v in eqn.params.values() for j in _jaxprs(v)]
        if inner:  # jit, remat, custom_jvp / custom_vjp calls, ...: their body once
            for j in inner:
                c.add(count_jaxpr(j, loops=loops))
            return c
        if name not in FREE:
            c.uncounted[name] += out
        return c
    c.by_primitive[name] += c.flops
    return c


def count_jaxpr(jaxpr, *, loops: bool = True) -> FlopCount:
    """The :class:`FlopCount` of a jaxpr (``jax.extend.core.Jaxpr`` or ``ClosedJaxpr``). ``loops=False`` counts
    every scan body once, as XLA's cost analysis does (what :func:`loop_factor` divides by)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = FlopCount()
    for eqn in jaxpr.eqns:
        total.add(_eqn_flops(eqn, loops))
    return total


def count_flops(fn, *args, **kwargs) -> FlopCount:
    """The :class:`FlopCount` of ``fn(*args, **kwargs)`` (arrays or ``jax.ShapeDtypeStruct``s: only traced, never
    compiled nor run); whole-program FLOPs, not per device."""
    import jax
    return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs))


def loop_factor(fn, *args) -> float:
    """How much XLA's ``cost_analysis()`` of ``fn``'s compiled program under-counts because it takes each loop body
    once: this counter's FLOPs with scans x their length over the same with every scan body once (1.0 without
    scans). The compiled count times this factor is the program's arithmetic as it runs (remat recomputation
    included), which is what ``compiled_flops`` reports in both benchmark scripts."""
    import jax
    jaxpr = jax.make_jaxpr(fn)(*args)
    once = count_jaxpr(jaxpr, loops=False).flops
    return count_jaxpr(jaxpr).flops / once if once else 1.0


def step_flops(config, s, state, gbatch) -> FlopCount:
    """The FLOPs of the trainer's step for ``config`` (``s``, ``state``: ``scene3d.train.setup``'s, possibly for
    another config of the same shapes; ``gbatch``: a global batch), traced on abstract values and counted by
    :func:`count_jaxpr`. ``gpu_check._model_flops`` calls it with attn_impl='xla' and no remat (model FLOPs)."""
    import jax
    from flax import nnx

    from scene3d import tasks, train
    from scene3d.core import sharding as sh
    task = tasks.get_task(config)
    graphdef = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(int(config.seed)))))[0]
    step = train.make_train_step(config, task, graphdef, s.tx, s.schedule)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), gbatch)
    with sh.use_mesh(s.mesh, s.rules):
        return count_flops(step, train.abstract_like(state), abstract)
