"""python -m scene3d.export: official fixtures -> step-0 run -> export is bit-exact; abstract exports have the
released manifests' keys and shapes; a tiny trained run round-trips through the torch-port layout; clear errors and
nothing written at --out on failure."""
import json
import os
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from scene3d import export, train
from scene3d.core import checkpoint as ckpt_lib
from scene3d.core.config import load_config
from scene3d.convert import can3tok as convert_can3tok
from scene3d.convert import engine
from scene3d.convert import scenetok as convert_scenetok
from scene3d.models import can3tok, scenetok

REPO = pathlib.Path(__file__).resolve().parents[1]
SCENETOK_MANIFESTS = {"re10k": "manifest_re10k.json", "dl3dv": "manifest_dl3dv.json"}


def fixture_dir(shared_dir, family, name):
    d = shared_dir / "fixtures" / family / name
    if not d.is_dir():
        pytest.skip(f"fixture {d} not found")
    return d


def assert_same_tensors(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def no_files_like(out: pathlib.Path) -> bool:
    """Neither ``out``, its sidecar, nor a temporary file of either is in the folder."""
    stem = out.name.rsplit(".", 1)[0]
    return not [p for p in out.parent.iterdir() if p.name.startswith((stem, "." + stem))]


# ---------------------------------------------------------------------------------------------------- Can3Tok


CAN3TOK_CONFIG = """
    from scene3d.core.config import load_config
    from scene3d.convert.can3tok import config_from_official


    def get_config(arg):
        # configs/can3tok.py:runlocal with the Can3Tok of an official fixture config.json (release layout, 18-ch rows)
        c = load_config({repo!r} + "/configs/can3tok.py:runlocal")
        cfg = config_from_official(arg)
        c.model.update(cfg, logvar_range=list(cfg["logvar_range"]))
        c.data.gaussians.update(num_gaussians=cfg["num_gaussians"], rows="release18")
        c.global_batch_size = 8
        return c
"""


@pytest.fixture(scope="module")
def can3tok_run(shared_dir, tmp_path_factory):
    """Fixture a imported into a step-0 run through the CLI."""
    d = fixture_dir(shared_dir, "can3tok", "a")
    tmp = tmp_path_factory.mktemp("can3tok_export")
    cfg = tmp / "can3tok_fixture.py"
    cfg.write_text(textwrap.dedent(CAN3TOK_CONFIG.format(repo=str(REPO))))
    config_arg = f"{cfg}:{d / 'config.json'}"
    workdir = tmp / "run"
    record = export.main([f"--import_from={d / 'weights.safetensors'}", "--layout=official",
                          f"--config={config_arg}", f"--workdir={workdir}"])
    return dict(dir=d, tmp=tmp, config_arg=config_arg, workdir=workdir, record=record,
                weights=load_file(d / "weights.safetensors"))


def test_can3tok_fixture_round_trip_through_a_step0_run(can3tok_run):
    r = can3tok_run
    workdir, weights = r["workdir"], r["weights"]
    assert r["record"]["class"] == "Can3Tok" and r["record"]["part"] == ""
    assert json.loads((workdir / "config.json").read_text())["model"]["head_layout"] == "release"
    with ckpt_lib.Checkpointer(workdir / "checkpoints", async_save=False) as ckpt:
        assert ckpt.all_steps() == [0]
    out = r["tmp"] / "export.safetensors"
    record = export.main([f"--workdir={workdir}", "--layout=official", f"--out={out}"])
    # bit-exact, same keys / shapes / dtypes: geo_decoder.* comes back from the import's passthrough file
    assert_same_tensors(load_file(out), weights)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar == {k: v for k, v in record.items() if k != "tensors"}
    assert sidecar["step"] == 0 and sidecar["params"] == "raw" and sidecar["layout"] == "official"
    assert sidecar["class"] == "Can3Tok" and sidecar["workdir"] == str(workdir)
    assert sorted(sidecar["passthrough"]) == sorted(k[len("shape_model."):] for k in weights
                                                   if k.startswith("shape_model.geo_decoder."))

    # the run's parameters are the fixture's, as the converter (independently of the CLI) maps them
    abstract = nnx.eval_shape(lambda: can3tok.Can3Tok(**convert_can3tok.config_from_official(r["dir"] / "config.json"),
                                                      rngs=nnx.Rngs(0)))
    want, _ = convert_can3tok.official_to_state(abstract, weights)
    _, model, info = export.load_run(str(workdir))
    assert info["step"] == 0
    got = engine.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    want = engine.flatten(nnx.to_pure_dict(want))
    assert sorted(got, key=str) == sorted(want, key=str)
    for p in want:
        np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(want[p]), err_msg=str(p))

    # without the passthrough file the unused geo_decoder tensors are zeros (the official code still loads it)
    os.rename(workdir / export.EXTRA_FILE, r["tmp"] / "extra.bak")
    try:
        out2 = r["tmp"] / "export_zeros.safetensors"
        export.main([f"--workdir={workdir}", "--layout=official", f"--out={out2}"])
        zeros = load_file(out2)
    finally:
        os.rename(r["tmp"] / "extra.bak", workdir / export.EXTRA_FILE)
    assert sorted(zeros) == sorted(weights)
    for k, v in weights.items():
        if k.startswith("shape_model.geo_decoder."):
            assert zeros[k].shape == v.shape and not zeros[k].any(), k
        else:
            np.testing.assert_array_equal(zeros[k], v, err_msg=k)


def test_step0_run_resumes_like_the_trainer(can3tok_run):
    """What scene3d.train does on start in a workdir with a checkpoint: restore into the state setup() creates,
    data iterator included; the EMA-less config's params are the imported ones, the optimiser state fresh."""
    config = load_config(can3tok_run["config_arg"])
    s, fresh = train.setup(config)
    data_iter = train.data_iterator(config, s.task, "train")
    with ckpt_lib.Checkpointer(can3tok_run["workdir"] / "checkpoints", async_save=False) as ckpt:
        state, meta = ckpt.restore(ckpt.latest_step(), abstract_state=train.abstract_like(fresh), data_iter=data_iter)
    assert int(state["step"]) == 0 and meta["step"] == 0
    for a in jax.tree.leaves(state["opt_state"]):
        assert not np.any(np.asarray(a)), "fresh AdamW moments and count are zeros"
    _, model, _ = export.load_run(str(can3tok_run["workdir"]))
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    next(data_iter)  # the restored iterator yields


def test_import_shape_mismatch_and_wrong_layout_write_nothing(can3tok_run, shared_dir):
    b = fixture_dir(shared_dir, "can3tok", "b") / "weights.safetensors"
    newdir = can3tok_run["tmp"] / "mismatch"
    with pytest.raises(ValueError, match=r"shape mismatch for shape_model\.\S+: expected \(\d+"):
        export.main([f"--import_from={b}", "--layout=official", f"--config={can3tok_run['config_arg']}",
                     f"--workdir={newdir}"])
    assert not newdir.exists()
    # an official file read as the torch_port layout (both are Can3Tok's): rejected, naming the file and the keys
    with pytest.raises(ValueError, match=r"weights\.safetensors: missing \d+ keys for this torch_port layout"):
        export.main([f"--import_from={b}", "--layout=torch_port", f"--config={can3tok_run['config_arg']}",
                     f"--workdir={newdir}"])
    assert not newdir.exists()
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        export.main([f"--import_from={b}", "--layout=official", f"--config={can3tok_run['config_arg']}",
                     f"--workdir={can3tok_run['workdir']}"])


def test_export_errors_leave_nothing_at_out(can3tok_run, tmp_path):
    workdir, out = can3tok_run["workdir"], tmp_path / "x.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.main([f"--workdir={tmp_path / 'nope'}", "--layout=official", f"--out={out}"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no checkpoints folder"):
        export.main([f"--workdir={tmp_path / 'empty'}", "--layout=official", f"--out={out}"])
    with pytest.raises(FileNotFoundError, match=r"checkpoint step 7 not found \(available: \[0\]\)"):
        export.main([f"--workdir={workdir}", "--layout=official", f"--out={out}", "--step=7"])
    with pytest.raises(ValueError, match=r"--layout: expected one of \('official', 'torch_port'\), got 'onnx'"):
        export.main([f"--workdir={workdir}", "--layout=onnx", f"--out={out}"])
    with pytest.raises(ValueError, match=r"part 'encoder_blocks' Stack has no 'official' layout; Stack supports: none"):
        export.main([f"--workdir={workdir}", "--layout=official", f"--out={out}", "--part=encoder_blocks"])
    with pytest.raises(ValueError, match=r"--part='encoder': Can3Tok \(Can3Tok\) has no submodule 'encoder' "
                                         r"\(submodules: \[.*'decoder_blocks'"):
        export.main([f"--workdir={workdir}", "--layout=official", f"--out={out}", "--part=encoder"])
    assert no_files_like(out)
    # a failure while writing (here: the sidecar) removes the safetensors file too and leaves no temporary file
    out.with_suffix(".json").mkdir()
    with pytest.raises(OSError):
        export.main([f"--workdir={workdir}", "--layout=official", f"--out={out}"])
    out.with_suffix(".json").rmdir()
    assert no_files_like(out)


def test_save_safetensors_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    import safetensors.numpy
    path = tmp_path / "w.safetensors"
    engine.save_safetensors(path, {"a": np.arange(3, dtype=np.float32)})

    def half_then_fail(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        engine.save_safetensors(path, {"a": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(load_file(path)["a"], np.arange(3, dtype=np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


# ---------------------------------------------------------------------------------------------------- SceneTok


@pytest.mark.parametrize("name", ["a", "b"])
def test_scenetok_fixture_official_round_trip(shared_dir, tmp_path, name):
    """The export module's official dispatch on the fixture: import -> export -> file is the fixture, bit-exact.
    (The scenetok task cannot build the release models: its decoder takes one camera per latent and the
    compressor's latents, so a release SceneTok is not a trainable run's model; see the module docstring.)"""
    d = fixture_dir(shared_dir, "scenetok", name)
    weights = load_file(d / "weights.safetensors")
    cfg = convert_scenetok.config_from_official(d / "config.json")
    abstract = nnx.eval_shape(lambda: scenetok.SceneTok(compressor=cfg["compressor"], decoder=cfg["decoder"],
                                                        rngs=nnx.Rngs(0)))
    values, report = export.from_state_dict(abstract, "official", weights, name=str(d))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, values)
    model = nnx.merge(graphdef, state)
    tensors = export.to_state_dict(model, "official", extra=report.passthrough)
    out = tmp_path / "stok.safetensors"
    export.write_export(out, tensors, {"layout": "official", "class": "SceneTok", "part": "", "step": 0})
    assert_same_tensors(load_file(out), weights)  # the release never writes denoiser.null_tokens: zero here
    # a non-zero (CFG-trained) null token is written
    model.decoder.null_token.set_value(jnp.full(model.decoder.null_token.shape, 0.5, jnp.float32))
    again = export.to_state_dict(model, "official")
    np.testing.assert_array_equal(again[convert_scenetok.NULL_KEY], np.full((1, 1, cfg["decoder"]["width"]), 0.5))


def manifest_shapes(path):
    m = json.loads(pathlib.Path(path).read_text())
    return {k: (tuple(s), d) for k, s, d in m["state_dict"]}


def test_abstract_exports_have_the_released_manifest_keys_and_shapes(shared_dir):
    root = shared_dir / "fixtures"
    for variant, fname in SCENETOK_MANIFESTS.items():
        if not (root / "scenetok" / fname).is_file():
            pytest.skip(f"{fname} not found")
        model = nnx.eval_shape(lambda v=variant: scenetok.SceneTok(variant=v, rngs=nnx.Rngs(0)))
        ours = export.to_state_dict(model, "official")  # abstract: ShapeDtypeStructs, nothing allocated
        assert all(isinstance(v, jax.ShapeDtypeStruct) for v in ours.values())
        assert {k: (tuple(v.shape), str(v.dtype)) for k, v in ours.items()} == manifest_shapes(
            root / "scenetok" / fname), variant
    path = root / "can3tok" / "manifest_shapevae-256.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    model = nnx.eval_shape(lambda: can3tok.Can3Tok(variant="release", head_layout="release", rngs=nnx.Rngs(0)))
    ours = export.to_state_dict(model, "official")
    assert {k: (tuple(v.shape), str(v.dtype)) for k, v in ours.items()} == manifest_shapes(path)
    table = export.summary_table(ours)
    assert table.splitlines()[-1].split()[1:3] == ["257", "1,081,548,993"]  # the manifest's key / param counts


# ---------------------------------------------------------------------------------------------------- torch port


FLOW_TINY = ["--config.data.size=8", "--config.data.num_train=64", "--config.data.num_eval=16",
             "--config.model.width=32", "--config.model.depth=2", "--config.model.heads=2", "--config.model.patch=2",
             "--config.global_batch_size=8", "--config.total_steps=2", "--config.ckpt_every=2",
             "--config.log_every=1", "--config.eval_every=0", "--config.optim.warmup_steps=1"]


def test_models_without_an_official_layout_are_named(tmp_path):
    sd = tmp_path / "w.safetensors"
    engine.save_safetensors(sd, {"x": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"LatentDiT has no 'official' layout; LatentDiT supports: \['torch_port'\]"):
        export.main([f"--import_from={sd}", "--layout=official", "--config=configs/flow_shapes.py:runlocal",
                     f"--workdir={tmp_path / 'run'}", *FLOW_TINY])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--config.model.nope: config has no field 'nope'"):
        export.main([f"--import_from={sd}", "--layout=torch_port", "--config=configs/flow_shapes.py:runlocal",
                     f"--workdir={tmp_path / 'run'}", "--config.model.nope=1"])


def test_tiny_trained_run_round_trips_through_the_torch_port(tmp_path):
    config = export.apply_overrides(load_config("configs/flow_shapes.py:runlocal"), FLOW_TINY)
    run = tmp_path / "run"
    train.train_and_evaluate(config, str(run))
    out = tmp_path / "dit.safetensors"
    record = export.main([f"--workdir={run}", "--layout=torch_port", f"--out={out}", "--params=raw"])
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["step"] == 2 and sidecar["params"] == "raw" and sidecar["spec"]["class"] == "LatentDiT"
    assert record["class"] == "LatentDiT"
    new = tmp_path / "imported"
    export.main([f"--import_from={out}", "--layout=torch_port", "--config=configs/flow_shapes.py:runlocal",
                 f"--workdir={new}", *FLOW_TINY])
    for params in ("raw", "ema"):  # the EMA of the imported run is its params
        _, a, _ = export.load_run(str(run), params="raw")
        _, b, info = export.load_run(str(new), params=params)
        assert info["step"] == 0
        la, lb = (jax.tree.leaves(nnx.state(m, nnx.Param)) for m in (a, b))
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    _, ema, _ = export.load_run(str(run), params="ema")
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
               zip(jax.tree.leaves(nnx.state(ema, nnx.Param)), jax.tree.leaves(nnx.state(a, nnx.Param))))


def test_wrapper_parts_and_frozen_tokenizers():
    """Stage-2 wrappers export their generator by default; a frozen tokenizer part exports all its weights (its
    Frozen variables are read as parameters)."""
    from scene3d.models.latent_dit import LatentDiT
    from scene3d.nn.frozen import freeze
    from scene3d.tasks.generate import LatentDiffusion

    def build():
        r = nnx.Rngs(0)
        return LatentDiffusion(LatentDiT(in_dim=4, num_tokens=8, variant="tiny", rngs=r), None,
                               freeze(can3tok.Can3Tok(variant="tiny", rngs=r)))

    m = nnx.eval_shape(build)
    assert export.default_part(m) == "dit"
    assert export.select_part(m, None) == (m.dit, "dit")
    tok, part = export.select_part(m, "tokenizer")
    assert part == "tokenizer" and not jax.tree.leaves(nnx.state(tok, nnx.Param))  # all Frozen
    ours = export.to_state_dict(tok, "official")
    unfrozen = nnx.eval_shape(lambda: can3tok.Can3Tok(variant="tiny", rngs=nnx.Rngs(0)))
    want = {"shape_model." + k: v for k, v in convert_can3tok.official_shapes(unfrozen, unused="zeros").items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == want
    assert export.select_part(m, "tokenizer.head_hidden.1")[0] is tok.head_hidden[1]
    with pytest.raises(ValueError, match=r"--part='tokenizer.nope': tokenizer \(Can3Tok\) has no submodule 'nope'"):
        export.select_part(m, "tokenizer.nope")
    with pytest.raises(ValueError, match=r"part 'dit' LatentDiT has no 'official' layout"):
        export._check_layout(m.dit, "official", "dit")


def test_scenetok_run_round_trip_exports_the_scenetok_part(tmp_path):
    """A SceneTok state_dict in the official layout (random tensors, plus a CFG null token) -> step-0 run of the
    scenetok task (SceneTokModel: default part 'scenetok') -> export: the same file, bit-exact."""
    from scene3d import tasks
    config = load_config("configs/scenetok.py:runlocal")
    abstract = nnx.eval_shape(lambda: tasks.get_task(config).build_model(nnx.Rngs(0)))
    part, name = export.select_part(abstract, None)
    assert name == "scenetok" and isinstance(part, scenetok.SceneTok)
    shapes = export.to_state_dict(part, "official")
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in shapes.items()}
    weights.update(convert_scenetok.rope_tables(part))  # deterministic buffers, checked on import
    weights[convert_scenetok.NULL_KEY] = rng.standard_normal((1, 1, part.decoder.config["width"])).astype(np.float32)
    src = tmp_path / "official.safetensors"
    engine.save_safetensors(src, weights)
    run, out = tmp_path / "run", tmp_path / "export.safetensors"
    record = export.main([f"--import_from={src}", "--layout=official", "--config=configs/scenetok.py:runlocal",
                          f"--workdir={run}"])
    assert record["part"] == "scenetok" and record["class"] == "SceneTok"
    export.main([f"--workdir={run}", "--layout=official", f"--out={out}"])
    assert_same_tensors(load_file(out), weights)
    assert json.loads(out.with_suffix(".json").read_text())["part"] == "scenetok"
