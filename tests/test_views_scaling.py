"""benchmarks/views_scaling.py --smoke runs and its memory table grows linearly with the number of views."""
import importlib.util
import pathlib

import numpy as np

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "views_scaling.py"


def test_views_scaling_smoke(capsys):
    spec = importlib.util.spec_from_file_location("views_scaling", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run("tiny-dinov2", "tiny", 8, 28, (2, 4, 8), 2, 1)
    out = capsys.readouterr().out
    assert "ms/view" in out and "decode" in out
    enc = rows[:3]
    # arguments grow by exactly the extra views' images + cameras (float32)
    per_view = (28 * 28 * 3 + 16 + 4) * 4 / 2**20
    for r0, r1 in zip(enc, enc[1:]):
        np.testing.assert_allclose(r1["args_mib"] - r0["args_mib"], (r1["views"] - r0["views"]) * per_view,
                                   rtol=1e-6, atol=1e-9)
    # peak (args + temps) grows no faster than linearly: the slope 4 -> 8 views is not above the 2 -> 4 slope
    s1 = (enc[1]["peak_mib"] - enc[0]["peak_mib"]) / 2
    s2 = (enc[2]["peak_mib"] - enc[1]["peak_mib"]) / 4
    assert s2 <= s1 * 1.25 + 1e-3
    assert rows[-1]["views"] == "decode" and rows[-1]["ms_per_view"] > 0


def test_views_scaling_defaults_are_the_real_size(monkeypatch):
    """Without arguments the benchmark runs the dino2 card (DINOv2-B tower, 224 px, K = 1024 x 768) for 2-32 views;
    --card / explicit sizes reach ``run`` (checked without running the real size)."""
    spec = importlib.util.spec_from_file_location("views_scaling", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []
    monkeypatch.setattr(mod, "run", lambda *a, **k: calls.append((a, k)))
    mod.main([])
    mod.main(["--card", "siglip2", "--views", "2,4"])
    mod.main(["--card", "", "--encoder", "dinov2-S", "--variant", "S", "--tokens", "256", "--resolution", "112"])
    assert calls[0] == (("dinov2-B", "B", 1024, 224, (2, 4, 8, 16, 32), 4, 3), {"latent_dim": 768})
    assert calls[1] == (("siglip2-B", "B", 256, 256, (2, 4), 4, 3), {"latent_dim": 768})
    assert calls[2] == (("dinov2-S", "S", 256, 112, (2, 4, 8, 16, 32), 4, 3), {"latent_dim": None})
