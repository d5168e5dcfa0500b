"""Latent diffusion on Can3Tok latents: scene-derived conditions, conditioning encoders against numpy references,
a two-step run through scene3d.train on a 2 x 4 mesh (frozen tokenizer untouched, no optimiser state for it),
restoring the tokenizer from a stage-1 run, and classifier-free guidance against a hand-computed Euler step."""
import colorsys
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scene3d.core import config as config_lib
from scene3d.core import runs
from scene3d.core.checkpoint import Checkpointer
from scene3d.geometry import gaussians as gs
from scene3d.models import cond_encoders as ce
from scene3d.tasks import generate, stage1

from tests.tasks import ldm_setup


# ------------------------------------------------------------------------------------------ scene conditions


def _colorsys_name(rgb):
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.8 else "grey"
    deg = h * 360
    for bound, name in ((15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
                        (290, "purple"), (345, "pink"), (360.1, "red")):
        if deg < bound:
            return name


def test_colour_names_match_colorsys():
    rgb = np.random.default_rng(0).uniform(size=(2000, 3))
    got = [generate.COLOURS[i] for i in generate.colour_names(rgb)]
    assert got == [_colorsys_name(c) for c in rgb]
    assert set(got) == set(generate.COLOURS)  # every class occurs


def test_scene_caption_and_label_from_colours():
    raw = gs.pack(ldm_setup.scene((0.1, 0.2, 0.9), 0, n=100, share=0.7))
    label, caption = generate.scene_colours(raw)
    assert generate.COLOURS[label] == "blue"
    # mean HSV value 0.7 * 0.9 + 0.3 * 0.5 = 0.78 > 0.65: bright
    assert caption == "a bright scene, mostly blue and some grey"
    # Opacity weighs the vote: make the blue Gaussians transparent and grey dominates.
    g = gs.unpack(raw.copy())
    g.opacity[:70] = -10.0
    label, caption = generate.scene_colours(gs.pack(g))
    assert generate.COLOURS[label] == "grey" and caption == "a scene, mostly grey"


# ------------------------------------------------------------------------------------------ encoders


def test_hashed_bag_of_words_is_deterministic_and_order_free():
    a, b = ce.HashedBagOfWords(dim=32, max_words=6), ce.HashedBagOfWords(dim=32, max_words=6)
    caps = ["A red scene", "a blue scene", "scene red a", "one two three four five six seven"]
    ta, ma = a(caps)
    tb, mb = b(caps)
    np.testing.assert_array_equal(ta, tb)  # a fresh instance (fresh cache) gives the same features
    np.testing.assert_array_equal(ma, mb)
    assert ma.sum(1).tolist() == [3, 3, 3, 6]  # words counted, the 7-word caption cut at max_words
    assert not np.allclose(ta[0], ta[1])  # different captions differ (in the 'red'/'blue' token)
    np.testing.assert_allclose(ta[0, 0], ta[1, 0])  # the shared word 'a' has one vector
    # a bag of words: the same words in another order give the same multiset of tokens
    np.testing.assert_allclose(np.sort(ta[0][ma[0]], axis=0), np.sort(ta[2][ma[2]], axis=0))
    # another seed gives other vectors; the word vectors are N(0, I/dim)
    assert not np.allclose(ce.HashedBagOfWords(dim=32, seed=1)(["red"])[0][0, 0], a(["red"])[0][0, 0])
    v = np.stack([a.word_vector(f"w{i}") for i in range(400)])
    assert abs(v.std() * np.sqrt(32) - 1) < 0.05 and abs(v.mean()) < 0.01


def test_label_and_text_encoders_null_condition():
    enc = ce.LabelEncoder(5, 8, rngs=nnx.Rngs(0))
    table = np.asarray(enc.table.embedding[...])
    tok, mask = enc({"label": jnp.array([0, 3, 4])}, drop=jnp.array([False, True, False]))
    np.testing.assert_allclose(tok[:, 0], table[[0, 5, 4]])  # row 5 = the null class
    assert mask.shape == (3, 1) and mask.all()

    backbone = ce.HashedBagOfWords(dim=6, max_words=4)
    feats, fmask = backbone(["a red scene", "blue"])
    txt = ce.TextEncoder(6, 8, rngs=nnx.Rngs(1))
    tok, mask = txt({"text_tokens": jnp.asarray(feats), "text_mask": jnp.asarray(fmask)},
                    drop=jnp.array([False, True]))
    # reference: LayerNorm (scale 1, bias 0 at init) then the dense projection
    x = feats[0]
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    ref = ref @ np.asarray(txt.proj.kernel[...]) + np.asarray(txt.proj.bias[...])
    np.testing.assert_allclose(tok[0], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(mask[0], fmask[0])
    np.testing.assert_allclose(tok[1, 0], np.asarray(txt.null[...])[0])  # dropped: the null token alone
    np.testing.assert_array_equal(mask[1], [True, False, False, False])
    with pytest.raises(ValueError, match="text_tokens"):
        txt({"text_mask": jnp.asarray(fmask)})


def test_image_encoder_matches_numpy_patch_reference():
    enc = ce.ImageEncoder(16, 8, patch=8, pool="mean", rngs=nnx.Rngs(2))
    img = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    tok, mask = enc({"cond_image": jnp.asarray(img)})
    # reference: 8x8 patches in (py, px, c) order -> linear -> exact GELU -> linear -> mean over the 4 patches
    p = (img * 2 - 1).reshape(2, 2, 8, 2, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 192)
    h = p @ np.asarray(enc.patch.proj.kernel[...]) + np.asarray(enc.patch.proj.bias[...])
    h = np.asarray(jax.nn.gelu(jnp.asarray(h)))
    h = h @ np.asarray(enc.mix.kernel[...]) + np.asarray(enc.mix.bias[...])
    np.testing.assert_allclose(tok[:, 0], h.mean(1), rtol=1e-4, atol=1e-5)
    assert tok.shape == (2, 1, 8) and mask.all()
    with pytest.raises(ValueError, match=r"cond_image must be \(B, 16, 16, 3\)"):
        enc({"cond_image": jnp.zeros((2, 8, 8, 3))})


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ldm_setup.trained_run(tmp_path_factory)


def test_two_step_run_on_2x4_mesh(run):
    workdir, config, state = run
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if "train/loss" in l]
    assert [l["step"] for l in train_lines] == [1, 2]
    for l in train_lines:
        assert np.isfinite(l["train/loss"]) and l["train/step_skipped"] == 0
        # the latent statistics and the suggested scale are logged from the first step
        assert l["train/latent_std"] > 0
        np.testing.assert_allclose(l["train/suggested_scale"], 1 / l["train/latent_std"], rtol=1e-5)
    assert (workdir / "checkpoints" / "1").is_dir() and (workdir / "checkpoints" / "2").is_dir()
    assert json.loads((workdir / "config.json").read_text())["tokenizer"]["workdir"] is None

    # The tokenizer is frozen: it is carried as non-trainable state (no gradient, no optimiser state), and the
    # step-2 update (lr > 0) moved the DiT but left the tokenizer bit-identical.
    assert set(state["params"]) == {"dit", "cond"} and set(state["frozen"]) == {"tokenizer"}
    assert train_lines[1]["train/lr"] > 0
    full = nnx.merge_state(state["params"], state["frozen"])
    s1, s2 = (jax.device_get(runs.restore_variables(str(workdir), full, step=k)[0]) for k in (1, 2))
    assert len(jax.tree.leaves(s1["tokenizer"])) > 20
    for a, b in zip(jax.tree.leaves(s1["tokenizer"]), jax.tree.leaves(s2["tokenizer"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(s2["tokenizer"]), jax.tree.leaves(jax.device_get(state["frozen"]["tokenizer"]))):
        np.testing.assert_array_equal(a, b)
    # (adaLN-Zero: the first update reaches the zero-initialised final layer, which then is no longer zero)
    final1, final2 = (np.asarray(s["dit"]["final"]["linear"]["kernel"]) for s in (s1, s2))
    assert not final1.any() and final2.any()
    # Adam holds mu + nu for the trainable leaves only
    n_train = sum(x.size for x in jax.tree.leaves(state["params"]))
    n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
    assert n_opt - 2 * n_train < 16, (n_opt, n_train)  # + a few scalar counters
    # the parameters are sharded over the 2 x 4 mesh
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(state["params"])}
    assert any("fsdp" in s for s in specs), specs


def _stage1_run(tmp_path, config):
    """A fake stage-1 workdir: config.json + a checkpoint with params and EMA of a tiny Can3Tok."""
    s1 = config_lib.load_config(f"{ldm_setup.REPO}/configs/can3tok.py:runlocal")
    s1.model.update(config.tokenizer.model.to_dict())
    s1.data.gaussians.num_gaussians = ldm_setup.N
    workdir = tmp_path / "stage1"
    workdir.mkdir()
    config_lib.config_to_json(s1, workdir / "config.json")
    params = jax.device_get(jax.jit(lambda: nnx.state(stage1.build_tokenizer(s1, nnx.Rngs(7))))())
    ema = jax.tree.map(lambda x: x + 1.0, params)  # numpy
    with Checkpointer(workdir / "checkpoints", async_save=False) as ck:
        ck.save(3, {"params": params, "ema": ema, "step": jnp.int32(3)}, force=True)
    return workdir, params, ema


def test_tokenizer_restored_from_stage1_workdir(tmp_path):
    scenes = ldm_setup.write_scenes(tmp_path / "scenes")
    config = ldm_setup.tiny_config(scenes)
    s1dir, params, ema = _stage1_run(tmp_path, config)
    for use_ema, want in ((True, ema), (False, params)):
        config.tokenizer.update(workdir=str(s1dir), use_ema=use_ema)
        task = generate.GenerateTask(config)
        abstract = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
        state = task.restore_pretrained(abstract)
        got = state["tokenizer"]
        assert {type(v).__name__ for v in jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, nnx.Variable))} == \
            {"Frozen"}
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a tokenizer of another size is refused with the variable named
    config.tokenizer.workdir = str(s1dir)
    cfg = json.loads((s1dir / "config.json").read_text())
    cfg["model"]["embed_dim"] = 8
    (s1dir / "config.json").write_text(json.dumps(cfg))
    task = generate.GenerateTask(config)
    with pytest.raises(ValueError, match="expects"):
        task.restore_pretrained(nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))))


def test_missing_stage1_workdir_is_a_clear_error(tmp_path):
    config = ldm_setup.tiny_config(tmp_path)
    config.tokenizer.workdir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        generate.GenerateTask(config)


# ------------------------------------------------------------------------------------------ guidance


def test_cfg_scale_one_is_conditional_and_guidance_matches_reference(tmp_path):
    config = ldm_setup.tiny_config(tmp_path, cond="label")
    task = generate.GenerateTask(config)
    cond = {k: jnp.asarray(v) for k, v in task.cond_inputs(["red", "blue"]).items()}
    rng = jax.random.key(3)

    @jax.jit
    def run():
        # sampling latents needs no tokenizer: the generator alone
        graphdef, state = nnx.split(generate.LatentDiffusion(*task.build_generator(nnx.Rngs(0)), None))
        # Zero-initialised layers (adaLN, cross-attention outputs, final layer) would hide the condition: randomise.
        keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
        state = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(next(keys), x.shape, x.dtype), state)
        model = nnx.merge(graphdef, state)
        noise = jax.random.normal(rng, (2,) + task.latent_shape)
        t1 = jnp.ones((2,))
        v_c = model.velocity(noise, t1, cond, jnp.zeros((2,), bool))
        v_u = model.velocity(noise, t1, cond, jnp.ones((2,), bool))
        out = {}
        for hi, scale in ((1.0, 1.0), (1.0, 3.0), (0.5, 3.0)):  # t = 1 inside / outside the guidance interval
            task.config.flow.cfg_interval = (0.0, hi)
            out[hi, scale] = task.sample_latents(model, rng, num=2, cond_inputs=cond, num_steps=1, method="euler",
                                                 cfg_scale=scale)
        return noise, v_c, v_u, out

    noise, v_c, v_u, out = run()
    assert float(jnp.abs(v_c - v_u).max()) > 1e-3  # the condition matters
    for (hi, scale), got in out.items():
        # one Euler step from t = 1 to 0 with the guided velocity inside the interval, the conditional outside
        ref = noise - (v_u + scale * (v_c - v_u) if hi == 1.0 else v_c)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=f"interval hi {hi}, scale {scale}")
    np.testing.assert_allclose(out[1.0, 1.0], noise - v_c, rtol=1e-4, atol=1e-4)  # scale 1 = conditional only


def test_local_hf_text_backbone_slot(tmp_path):
    """'hf_local' loads a transformers encoder from a folder (a random tiny BERT here) and gives its last hidden
    states, equal to running the PyTorch model directly."""
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, BertTokenizer
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "scene", "mostly"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32)).eval()
    bert.save_pretrained(tmp_path)
    text = ce.make_text_backbone("hf_local", path=str(tmp_path), max_words=8)
    tokens, mask = text(["a red scene", "mostly blue"])
    assert tokens.shape == (2, 8, 16) and text.dim == 16
    assert mask.sum(1).tolist() == [5, 4]  # [CLS] words [SEP]
    ids = torch.tensor([[2, 5, 6, 8, 3, 0, 0, 0], [2, 9, 7, 3, 0, 0, 0, 0]])
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=torch.tensor(mask.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(tokens, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot load"):
        ce.LocalHFText(str(tmp_path / "missing"))


def test_image_condition_is_a_preview_render(tmp_path):
    config = ldm_setup.tiny_config(tmp_path, cond="image", **{"cond.source": "colours"})
    task = generate.GenerateTask(config)
    red, blue = (gs.pack(ldm_setup.scene(c, 0, n=100, share=1.0)).astype(np.float32)
                 for c in ((0.9, 0.1, 0.1), (0.1, 0.2, 0.9)))
    ex_red, ex_blue = (task.data_transforms("train")[0]({"gaussians": r, "scene_id": "x"}) for r in (red, blue))
    assert set(ex_red) == {"gaussians", "label", "cond_image"}  # strings dropped: the batch is numeric
    img_r, img_b = ex_red["cond_image"], ex_blue["cond_image"]
    assert img_r.shape == (32, 32, 3) and img_r.dtype == np.float32 and 0 <= img_r.min() and img_r.max() <= 1
    # covered pixels take the scene's colour on the white background
    covered = img_r.min(-1) < 0.9
    assert covered.mean() > 0.05
    assert img_r[covered][:, 0].mean() > img_r[covered][:, 2].mean() + 0.3
    assert img_b[img_b.min(-1) < 0.9][:, 2].mean() > img_b[img_b.min(-1) < 0.9][:, 0].mean() + 0.3
    # user images: a path, resized to cond.image_size
    from PIL import Image
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(tmp_path / "view.png")
    inp = task.cond_inputs([str(tmp_path / "view.png")])
    assert inp["cond_image"].shape == (1, 32, 32, 3)
    np.testing.assert_allclose(inp["cond_image"], 200 / 255, atol=1e-6)
