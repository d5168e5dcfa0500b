"""Execute every colabs/*.ipynb top to bottom (nbclient, python3 kernel) at smoke-test size and check what each one
leaves behind: files it wrote, a loss that went down, a JAX / PyTorch parity number.

The kernel is a subprocess: its environment is set here (CPU, one device like a Colab CPU runtime, tiny sizes
through SCENE3D_COLAB_*; the built-in dataset and a JAX compilation cache shared by the notebooks of a worker)."""
import json
import os
import pathlib
import time

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
COLABS = REPO / "colabs"
NOTEBOOKS = sorted(p.name for p in COLABS.glob("*.ipynb"))
CELL_TIMEOUT = 300
TIMES: dict[str, float] = {}


def test_notebooks_found_and_clean():
    """The committed notebooks carry no outputs and start with a markdown introduction."""
    assert NOTEBOOKS[:4] == ["01_encode_and_render.ipynb", "02_train_live.ipynb", "03_generate.ipynb",
                             "04_export_to_pytorch.ipynb"], NOTEBOOKS
    for name in NOTEBOOKS:
        nb = nbformat.read(COLABS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown", name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not cleared"
        setup = nb.cells[1].source
        assert "google.colab" in setup and "pip" in setup, f"{name}: second cell must be the guarded Colab install"


@pytest.fixture(scope="session")
def shared_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("colab_shared")
    return {"data": base / "tfds", "cache": base / "jax_cache"}


def run_notebook(name, tmp_path, shared_dirs, **env_extra):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENE3D_COLAB_")}
    xla = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env.update({
        "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla, "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "SCENE3D_DATA_DIR": str(shared_dirs["data"]), "JAX_COMPILATION_CACHE_DIR": str(shared_dirs["cache"]),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "SCENE3D_COLAB_QUICK": "1", "SCENE3D_COLAB_STEPS": "30", "SCENE3D_COLAB_OUT": str(out),
        "MPLBACKEND": "Agg",
    })
    env.update(env_extra)
    nb = nbformat.read(COLABS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0, c0 = time.perf_counter(), _children_cpu()
    client.execute(env=env)
    TIMES[name] = time.perf_counter() - t0
    print(f"{name}: executed in {TIMES[name]:.1f} s wall, {_children_cpu() - c0:.1f} s CPU (kernel); "
          f"code cells (s): {cell_seconds(nb)}")
    return nb, out


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cell_seconds(nb) -> list:
    """Wall seconds per executed code cell (nbclient's timing metadata)."""
    from datetime import datetime
    out = []
    for cell in nb.cells:
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            a, b = (datetime.fromisoformat(ex[k].replace("Z", "+00:00"))
                    for k in ("iopub.execute_input", "shell.execute_reply"))
            out.append(round((b - a).total_seconds(), 1))
    return out


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") if o.output_type == "stream" else json.dumps(o.get("data", {}).get(
                "text/plain", "")))
    return "\n".join(parts)


# Notebooks 01 and 03 only need a trained run to load and use (their checks are shapes, files and finiteness):
# a few steps. 02 trains the full 30 (its loss must go down); 04 exports 02's run.
FEW_STEPS = {"SCENE3D_COLAB_STEPS": "4"}


def test_01_encode_and_render(tmp_path, shared_dirs):
    nb, out = run_notebook("01_encode_and_render.ipynb", tmp_path, shared_dirs, **FEW_STEPS)
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (1, 16, 32) and np.isfinite(tokens).all()  # QUICK: K = 16 tokens of rae3d tiny's 32
    from PIL import Image
    gif = Image.open(out / "trajectory.gif")
    assert gif.n_frames >= 2 and gif.size == (28, 28)
    assert "scene tokens: (1, 16, 32)" in outputs_text(nb)


def test_02_train_live(tmp_path, shared_dirs):
    nb, out = run_notebook("02_train_live.ipynb", tmp_path, shared_dirs)
    shared_dirs["flow_run"] = out / "flow_shapes_run"  # notebook 04 exports this run (same worker: loadfile)
    rows = [json.loads(l) for l in (out / "flow_shapes_run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses  # it learned
    assert any("eval/val_loss" in r for r in rows)
    assert list((out / "flow_shapes_run" / "images").glob("*samples*.png"))
    from PIL import Image
    assert Image.open(out / "loss_curve.png").size == (560, 300)
    assert f"train loss: first {losses[0]:.4f}, last {losses[-1]:.4f}" in outputs_text(nb)


def test_03_generate(tmp_path, shared_dirs):
    nb, out = run_notebook("03_generate.ipynb", tmp_path, shared_dirs, **FEW_STEPS)
    from scene3d.data import splat_io
    record = json.loads((out / "ldm_run" / "config.json").read_text())
    assert record["tokenizer"]["workdir"] == str(out / "can3tok_run")  # stage 2 used the notebook's stage 1
    for i in range(2):
        g = splat_io.read_ply(out / "samples" / f"sample_{i}.ply")
        assert np.asarray(g.xyz).shape == (48, 3) and np.isfinite(np.asarray(g.xyz)).all()
    from PIL import Image
    assert Image.open(out / "samples" / "sample_0_orbit.gif").n_frames >= 2
    assert Image.open(out / "points_and_frustums.png").size[0] > 600
    assert "generated Gaussians: (2, 48, 14)" in outputs_text(nb)


def test_04_export_to_pytorch(tmp_path, shared_dirs):
    run = shared_dirs.get("flow_run")  # 02's trained run when it ran in this process, else 04 trains its own
    extra = {"SCENE3D_COLAB_WORKDIR": str(run)} if run is not None and (run / "checkpoints").is_dir() else {}
    nb, out = run_notebook("04_export_to_pytorch.ipynb", tmp_path, shared_dirs, **extra)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["velocity_max_abs_diff"] < 1e-4, parity
    assert parity["sample_max_abs_diff"] < 1e-3, parity
    sidecar = json.loads((out / "flow_shapes_dit.json").read_text())
    assert sidecar["layout"] == "torch_port" and sidecar["class"] == "LatentDiT"
    assert "velocity: max |jax - torch|" in outputs_text(nb)
