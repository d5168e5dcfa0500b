import json
import textwrap

import ml_collections
import pytest

from scene3d.core import config as config_lib
from scene3d.core.config import parse_arg


def test_defaults_when_no_arg():
    c = parse_arg(None, variant="B", runlocal=False, res=64)
    assert isinstance(c, ml_collections.ConfigDict)
    assert c.to_dict() == {"variant": "B", "runlocal": False, "res": 64}
    assert parse_arg("", res=3).res == 3


def test_bare_names_and_casting():
    c = parse_arg("runlocal,variant=S,res=32,lr=3e-4,ema=False,shape=2+4", variant="B", runlocal=False, res=64,
                  lr=1e-3, ema=True, shape=(1, 1))
    assert c.runlocal is True
    assert c.variant == "S"
    assert c.res == 32 and type(c.res) is int
    assert c.lr == pytest.approx(3e-4) and type(c.lr) is float
    assert c.ema is False
    assert c.shape == (2, 4)


@pytest.mark.parametrize("text,expected", [("0", False), ("1", True), ("false", False), ("True", True),
                                           ("no", False), ("yes", True)])
def test_bool_spellings(text, expected):
    assert parse_arg(f"flag={text}", flag=not expected).flag is expected


def test_int_default_accepts_float_only_via_float_default():
    assert parse_arg("x=2", x=1.0).x == 2.0 and isinstance(parse_arg("x=2", x=1.0).x, float)
    with pytest.raises(ValueError, match=r"x='2.5'.*expected int"):
        parse_arg("x=2.5", x=1)


def test_unknown_key_lists_known_keys():
    with pytest.raises(ValueError) as e:
        parse_arg("runlocal,varaint=S", variant="B", runlocal=False)
    msg = str(e.value)
    assert "'varaint'" in msg and "variant" in msg and "runlocal" in msg


def test_bad_bool_and_missing_value():
    with pytest.raises(ValueError, match="boolean"):
        parse_arg("runlocal=maybe", runlocal=False)
    with pytest.raises(ValueError, match="without a value"):
        parse_arg("res", res=64)


def test_lazy_guesses_types_of_unknown_keys():
    c = parse_arg("a=1,b=0.5,c=hello,d,e=false", lazy=True, z=0)
    assert c.to_dict() == {"z": 0, "a": 1, "b": 0.5, "c": "hello", "d": True, "e": False}


def test_none_default_is_guessed():
    assert parse_arg("seed=7", seed=None).seed == 7


def test_load_config_and_json(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(textwrap.dedent("""
        import ml_collections
        from scene3d.core.config import parse_arg

        def get_config(arg=None):
            arg = parse_arg(arg, variant="B", runlocal=False, res=64)
            c = ml_collections.ConfigDict()
            c.variant = arg.variant
            c.res = 16 if arg.runlocal else arg.res
            c.mesh = {"data": -1, "fsdp": 1}
            c.rules = (("batch", ("data", "fsdp")), ("embed", None))
            c.lr = float("inf")
            return c
        """))
    c = config_lib.load_config(f"{path}:runlocal,variant=S")
    assert c.variant == "S" and c.res == 16
    assert config_lib.load_config(str(path)).res == 64
    out = tmp_path / "config.json"
    text = config_lib.config_to_json(c, out)
    back = json.loads(out.read_text())
    assert back == json.loads(text)
    assert back["mesh"] == {"data": -1, "fsdp": 1}
    assert back["rules"] == [["batch", ["data", "fsdp"]], ["embed", None]]
    assert back["lr"] == "inf"
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_lib.load_config("nope.py:runlocal")


def test_check_keys_names_the_field_and_lists_unknown_and_known_keys():
    from scene3d.core.config import check_keys
    check_keys({"a": 1, "b": 2}, {"a", "b", "c"}, "config.model")  # a subset passes
    with pytest.raises(ValueError, match=r"^config.model: unknown keys \['d', 'e'\]; known: \['a', 'b'\] \(hint\)$"):
        check_keys(ml_collections.ConfigDict({"a": 1, "e": 2, "d": 3}), ("b", "a"), "config.model", "(hint)")


def test_model_section_checks_the_model_name_and_keys():
    from scene3d.core.config import model_section
    cfg = ml_collections.ConfigDict({"model": {"name": "rae3d", "variant": "tiny"}})
    assert model_section(cfg, "rae3d", "rae3d", {"name", "variant"}) is cfg.model
    with pytest.raises(ValueError, match=r"config.model.name: the autoencode task trains 'can3tok', got 'rae3d'"):
        model_section(cfg, "autoencode", "can3tok", {"name", "variant"})
    with pytest.raises(ValueError, match=r"config.model: unknown keys \['variant'\]"):
        model_section(cfg, "rae3d", "rae3d", {"name"})
