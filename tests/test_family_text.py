"""``generate(prompt="...")`` on tiny Emu3 / Lumina-mGPT folders (zipar.families.tiny): the
family template from the folder's tokenizer file, Emu3's default negative prompt, and pixels from
the folder's VQ decoder (compared with a decoder built independently from the same random
weights)."""

import numpy as np
import pytest

try:
    import tokenizers  # noqa: F401
except ImportError as e:
    pytest.skip(f"tokenizers not available: {e}", allow_module_level=True)

import zipar  # noqa: E402
from zipar.families import prompts  # noqa: E402
from zipar.families.chameleon_vq import (ChameleonVQDecoder,  # noqa: E402
                                         random_chameleon_vq_state_dict)
from zipar.families.emu3_vq import Emu3VQDecoder, random_emu3_vq_state_dict  # noqa: E402
from zipar.families.tiny import write_tiny_emu3, write_tiny_lumina  # noqa: E402

GRID = (4, 4)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    return dict(emu3=write_tiny_emu3(d / "emu3"), lumina=write_tiny_lumina(d / "lumina"),
                emu3_bare=write_tiny_emu3(d / "emu3_bare", tokenizer=False, vq=False),
                lumina_novq=write_tiny_lumina(d / "lumina_novq", vq=False))


def _same(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.stats["forward_passes"] == b.stats["forward_passes"]


def test_emu3_text_prompt_is_the_template_with_the_default_negative(folders):
    m = zipar.load(folders["emu3"])
    tok = prompts.load_tokenizer(folders["emu3"])
    sp = prompts.emu3_special_ids(tok)
    # the template by hand (spec families.md 3.1): BOS text+suffix BOI "4*4" IMG
    want = ([sp["bos"]] + tok.encode("a red fox" + prompts.EMU3_POSITIVE_SUFFIX,
                                     add_special_tokens=False).ids
            + [sp["boi"]] + tok.encode("4*4", add_special_tokens=False).ids + [sp["img"]])
    neg = ([sp["bos"]] + tok.encode(prompts.EMU3_NEGATIVE_PROMPT, add_special_tokens=False).ids
           + want[-5:])
    assert want[-5:] == [sp["boi"], tok.token_to_id("4"), tok.token_to_id("*"),
                         tok.token_to_id("4"), sp["img"]]
    kw = dict(grid=GRID, policy=zipar.ZipAR(2), seed=3, cfg_scale=3.0)
    a = m.generate(prompt="a red fox", **kw)
    b = m.generate(prompt_ids=want, negative_prompt_ids=neg, **kw)
    _same(a, b)
    # another negative text is another unconditional stream
    c = m.generate(prompt="a red fox", negative_prompt="blurry, bad hands", **kw)
    n2 = [sp["bos"]] + tok.encode("blurry, bad hands", add_special_tokens=False).ids + want[-5:]
    _same(c, m.generate(prompt_ids=want, negative_prompt_ids=n2, **kw))
    # no guidance: no negative stream at all
    d = m.generate(prompt="a red fox", grid=GRID, cfg_scale=1.0, seed=3)
    _same(d, m.generate(prompt_ids=want, grid=GRID, cfg_scale=1.0, seed=3))
    # a batch of texts
    e = m.generate(prompt=["a red fox", "a cat in the snow"], **kw)
    assert e.tokens.shape == (2, 4, 4)
    np.testing.assert_array_equal(e.tokens[0], a.tokens[0])


def test_lumina_text_prompt_is_the_template_with_size_tokens(folders):
    m = zipar.load(folders["lumina"])
    tok = prompts.load_tokenizer(folders["lumina"])
    # spec families.md 3.2: BOS + "Generate an image of {w}x{h} ..." + <reserved08706>; a 4x4
    # grid is 64x64 px, size token <reserved08802> (2 codes per 32 px)
    text = ("Generate an image of 64x64 according to the following prompt:\na red fox"
            "<reserved08706>")
    want = [tok.token_to_id("<s>")] + tok.encode(text, add_special_tokens=False).ids
    assert want[-1] == tok.token_to_id("<reserved08706>")
    kw = dict(grid=GRID, policy=zipar.ZipAR(2), seed=5)
    a = m.generate(prompt="a red fox", **kw)
    _same(a, m.generate(prompt_ids=want, **kw))
    size = tok.token_to_id("<reserved08802>")
    assert list(a.ids[0, :3]) == [tok.token_to_id("<racm3:break>"), size, size]
    assert a.ids[0, -1] == tok.token_to_id("<eoss>")
    # a negative text goes through the same template
    neg = [tok.token_to_id("<s>")] + tok.encode(text.replace("a red fox", "a cat"),
                                                add_special_tokens=False).ids
    _same(m.generate(prompt="a red fox", negative_prompt="a cat", **kw),
          m.generate(prompt_ids=want, negative_prompt_ids=neg, **kw))


def test_images_from_the_folders_vq_decoder(folders):
    m = zipar.load(folders["emu3"])
    r = m.generate(prompt="a red fox", grid=GRID, policy=zipar.ZipAR(2), seed=1)
    dec = Emu3VQDecoder(random_emu3_vq_state_dict(ch=32, ch_mult=(1, 2), codebook_size=32,
                                                  num_res_blocks=1, attn_levels=(1,),
                                                  temporal_blocks=1, seed=1))
    assert r.images.dtype == np.uint8 and r.images.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(r.images, dec.decode(r.tokens))
    m = zipar.load(folders["lumina"])
    r = m.generate(prompt=["a red fox", "a cat"], grid=GRID, policy=zipar.Raster(), seed=1)
    dec = ChameleonVQDecoder(random_chameleon_vq_state_dict(
        ch=32, ch_mult=(1, 2), z_channels=32, embed_dim=32, codebook_size=16, num_res_blocks=1,
        seed=2))
    assert r.images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(r.images, dec.decode(r.tokens))
    assert m.generate(prompt="a cat", grid=GRID, decode_images=False).images is None


def test_tokens_only_and_errors(folders):
    bare = zipar.load(folders["emu3_bare"])
    assert bare.tokenizer_path is None and bare.vq_decoder is None
    r = bare.generate(prompt_ids=[43, 14, 46, 5, 11, 5, 45], grid=GRID, cfg_scale=1.0)
    assert r.images is None and r.tokens.shape == (1, 4, 4)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        bare.generate(prompt="a red fox", grid=GRID)
    novq = zipar.load(folders["lumina_novq"])
    assert novq.generate(prompt="a red fox", grid=GRID).images is None
    m = zipar.load(folders["emu3"])
    with pytest.raises(ValueError, match="either prompt"):
        m.generate(prompt="a fox", prompt_ids=[43, 45], grid=GRID)
    with pytest.raises(ValueError, match="cfg_scale == 1"):
        m.generate(prompt="a fox", negative_prompt="a cat", grid=GRID, cfg_scale=1.0)
    with pytest.raises(ValueError, match="needs a text prompt"):
        m.generate(negative_prompt="a cat", grid=GRID)
    with pytest.raises(TypeError):
        m.generate(prompt=[1, 2], grid=GRID)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.generate(prompt="a fox")  # the default 90x90 grid does not fit a 512-position model
    with pytest.raises(ValueError, match="even"):
        zipar.load(folders["lumina"]).generate(prompt="a fox", grid=(3, 4))


def test_meta_chameleon_files_in_a_tokenizer_subfolder(tmp_path):
    """Lumina-mGPT folders with Meta's files copied under tokenizer/: text_tokenizer.json and
    vqgan.safetensors are found there."""
    import os
    import shutil

    d = write_tiny_lumina(tmp_path / "lumina")
    os.makedirs(os.path.join(d, "tokenizer"))
    shutil.move(os.path.join(d, "tokenizer.json"),
                os.path.join(d, "tokenizer", "text_tokenizer.json"))
    shutil.move(os.path.join(d, "vqgan.safetensors"), os.path.join(d, "tokenizer"))
    m = zipar.load(d)
    assert m.tokenizer_path.endswith(os.path.join("tokenizer", "text_tokenizer.json"))
    ref = zipar.load(write_tiny_lumina(tmp_path / "ref"))
    a = m.generate(prompt="a red fox", grid=GRID, seed=4)
    b = ref.generate(prompt="a red fox", grid=GRID, seed=4)
    _same(a, b)
    np.testing.assert_array_equal(a.images, b.images)
