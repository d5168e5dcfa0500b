"""Conditions of the Can3Tok stage-2 tasks from files: captions and conditioning images next to PLY files (through
the real data pipeline), cond.source auto / file / colours, clear errors for missing or unreadable files, and the
'hf_local' text backbone on tiny random CLIP text / T5 encoder models saved with save_pretrained, against the
PyTorch models' own outputs."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from scene3d import data as data_lib
from scene3d.data import gs_pipeline
from scene3d.models import cond_encoders as ce
from scene3d.tasks import generate

from tests.tasks import ldm_setup

VOCAB = ["<pad>", "<unk>", "<s>", "</s>", "a", "mostly", "red", "blue", "green", "yellow", "scene", "number", "bright",
         "dark", "and", "some", "grey"] + [str(i) for i in range(8)]


def write_text_model(folder, kind: str):
    """A tiny random CLIP text tower ('clip') or T5 encoder ('t5') + a WordLevel tokenizer, saved with
    save_pretrained (nothing downloads). Returns the torch model."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    if kind == "clip":
        cfg = transformers.CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32,
                                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                          pad_token_id=0, bos_token_id=2, eos_token_id=3)
        model = transformers.CLIPTextModel(cfg)
    else:
        cfg = transformers.T5Config(vocab_size=len(VOCAB), d_model=12, d_kv=6, d_ff=24, num_layers=1, num_heads=2,
                                    pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
        model = transformers.T5EncoderModel(cfg)
    model.eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    return model


def _ids(caption: str, length: int):
    """Word ids of a caption padded with <pad> (the WordLevel tokenizer adds no special tokens): a reference
    tokenisation independent of transformers."""
    ids = [VOCAB.index(w) for w in caption.split()][:length]
    return ids + [0] * (length - len(ids))


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_hf_local_text_tower_matches_torch(tmp_path, kind):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model = write_text_model(tmp_path, kind)
    text = ce.make_text_backbone("hf_local", path=str(tmp_path), max_words=6, dim=64)  # dim: hashed_bow's field
    caps = ["a mostly red scene", "bright blue and some grey green scene"]  # the second is cut at 6 words
    tokens, mask = text(caps)
    assert text.dim == (16 if kind == "clip" else 12) and tokens.shape == (2, 6, text.dim)
    assert type(text.model).__name__ == ("CLIPTextModel" if kind == "clip" else "T5EncoderModel")
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0], [1] * 6])
    ids = torch.tensor([_ids(c, 6) for c in caps])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=torch.tensor(mask.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(tokens, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(tokens[0, :4] - tokens[1, :4]).max() > 1e-3  # different words, different features


def test_hf_local_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot load"):
        ce.make_text_backbone("hf_local", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="path is empty"):
        ce.make_text_backbone("hf_local", path="")
    with pytest.raises(ValueError, match=r"unknown keys \['widht'\]"):
        ce.make_text_backbone("hashed_bow", widht=3)


# ------------------------------------------------------------------------------------------ files next to PLYs


def _image(path, rgb, hw=(40, 30)):
    Image.fromarray(np.broadcast_to(np.asarray(rgb, np.uint8), hw + (3,)).copy()).save(path)


def test_side_files_of_ply_scenes(tmp_path):
    scenes = ldm_setup.write_scenes(tmp_path / "s")
    (scenes / "caption.txt").write_text("the folder's caption")
    (scenes / "scene_1.txt").unlink()  # scene 1: the folder's caption.txt
    _image(scenes / "cond.png", (10, 20, 30))
    _image(scenes / "scene_2.png", (200, 100, 0))
    src = gs_pipeline.PlySource(str(scenes))
    rec = {r["scene_id"]: r for r in (src[i] for i in range(len(src)))}
    assert rec["scene_0"]["caption"] == ldm_setup.caption(0)  # <stem>.txt first, stripped
    assert rec["scene_1"]["caption"] == "the folder's caption"
    assert rec["scene_2"]["cond_image"].shape == (40, 30, 3) and (rec["scene_2"]["cond_image"] == [200, 100, 0]).all()
    assert (rec["scene_0"]["cond_image"] == [10, 20, 30]).all()  # cond.png
    # through the dataset's own transform (crop, normalise) the fields pass unchanged
    cfg = ldm_setup.tiny_config(scenes)
    ex = data_lib.get_transforms(cfg.data, "train")[0].random_map(src[0], np.random.default_rng(0))
    assert ex["caption"] == ldm_setup.caption(0) and ex["gaussians"].shape == (ldm_setup.N, 14)
    np.testing.assert_array_equal(ex["cond_image"], rec["scene_0"]["cond_image"])
    # an empty or unreadable file is an error naming it
    (scenes / "scene_3.txt").write_text("  \n")
    with pytest.raises(ValueError, match=r"scene_3.txt: cannot read the scene's caption \(empty caption\)"):
        src[3]
    (scenes / "scene_4.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="scene_4.png: cannot read the scene's cond_image"):
        src[4]
    # no side files: no fields
    bare = gs_pipeline.PlySource(str(ldm_setup.write_scenes(tmp_path / "bare", captions=False)))
    assert set(bare[0]) == {"gaussians", "scene_id"}


def test_conditions_from_files_through_the_pipeline(tmp_path):
    """cond.source 'auto' on PLY data reads the files: a text run's features are the backbone's features of the
    caption file, an image run's condition is the file resized to cond.image_size; 'colours' ignores them."""
    scenes = ldm_setup.write_scenes(tmp_path / "s")
    rgb = np.random.default_rng(0).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(scenes / "cond.png")

    def examples(config, n=8):
        src = data_lib.get_source(config.data, "train")
        task = generate.GenerateTask(config)
        tf = data_lib.get_transforms(config.data, "train") + task.data_transforms("train")
        out = []
        for i in range(n):
            ex = src[i]
            for t in tf:
                ex = t.random_map(ex, np.random.default_rng(i)) if hasattr(t, "random_map") else t(ex)
            out.append((src[i]["scene_id"], ex))
        return task, out

    task, got = examples(ldm_setup.tiny_config(scenes, cond="text"))
    assert task.conditions.source == "file"
    backbone = ce.HashedBagOfWords(dim=16, max_words=8)  # the config's cond.text (TINY)
    for sid, ex in got:
        i = int(sid.split("_")[1])
        want, wmask = backbone([ldm_setup.caption(i)])
        np.testing.assert_array_equal(ex["text_tokens"], want[0])
        np.testing.assert_array_equal(ex["text_mask"], wmask[0])
        assert set(ex) == {"gaussians", "text_tokens", "text_mask"}  # numeric only, no colour label
    task, got = examples(ldm_setup.tiny_config(scenes, cond="image", **{"cond.image_size": 8}), n=1)
    want = np.asarray(Image.fromarray(rgb[4:44]).resize((8, 8), Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(got[0][1]["cond_image"], want, atol=1e-6)  # the file's centre square, resized
    # colours: the heuristic, whatever the files say
    task, got = examples(ldm_setup.tiny_config(scenes, cond="text", **{"cond.source": "colours"}), n=2)
    for sid, ex in got:
        raw = ex["gaussians"]
        label, cap = generate.scene_colours(raw)
        assert ex["label"] == label
        np.testing.assert_array_equal(ex["text_tokens"], backbone([cap])[0][0])


def test_missing_condition_files_are_clear_errors(tmp_path):
    scenes = ldm_setup.write_scenes(tmp_path / "s", captions=False)
    config = ldm_setup.tiny_config(scenes, cond="text")
    task = generate.GenerateTask(config)
    ex = {"gaussians": gs_pipeline.PlySource(str(scenes))[0]["gaussians"][:ldm_setup.N], "scene_id": "scene_0"}
    with pytest.raises(ValueError, match=r"scene 'scene_0': config.cond.source='file' .* 'caption' field.*"
                                         r"caption.txt or <stem>.txt next to the PLY.*cond.source=colours"):
        task.data_transforms("train")[0](ex)
    with pytest.raises(ValueError, match=r"scene 'scene_0': .* needs a caption; the dataset's is empty"):
        task.data_transforms("train")[0](dict(ex, caption=b" "))  # a prepared dataset's '' for no caption.txt
    config = ldm_setup.tiny_config(scenes, cond="image")
    with pytest.raises(ValueError, match=r"'cond_image' field.*cond.png or <stem>.png"):
        generate.GenerateTask(config).data_transforms("train")[0](ex)
    with pytest.raises(ValueError, match=r"config.cond.source: expected one of \('auto', 'file', 'colours'\)"):
        generate.GenerateTask(ldm_setup.tiny_config(scenes, **{"cond.source": "captions"}))
    # the built-in scenes have no files: 'auto' means the colour heuristic there
    from scene3d.core.config import load_config
    c = load_config(f"{ldm_setup.CONFIG}:runlocal")
    c.tokenizer.model.update(ldm_setup.TINY_TOKENIZER)
    c.data.gaussians.num_gaussians = ldm_setup.N
    assert c.data.name in generate.BUILTIN_DATA and generate.GenerateTask(c).conditions.source == "colours"
