"""Emu3 / Lumina-mGPT prompt templates (zipar.families.prompts) on tiny tokenizer files built
here with the ``tokenizers`` package; Emu3 compared with transformers' Emu3Processor (needs
Pillow for its image processor) and with transformers' tokenizer on the processor's string.
transformers has no Lumina-mGPT processor: its ids are compared with the template built by hand
from the spec (families.md 3.2)."""

import json

import pytest

try:
    import tokenizers  # noqa: F401
except ImportError as e:
    pytest.skip(f"tokenizers not available: {e}", allow_module_level=True)

from zipar.families import prompts  # noqa: E402

EMU3_SPECIALS = ["<|endoftext|>", "<|extra_200|>", "<|extra_201|>", "<|extra_203|>",
                 "<|extra_204|>", "<|image token|>", "<|image start|>", "<|image end|>",
                 "<image>"]
LUMINA_SPECIALS = ["<s>", "<pad>", "</s>", "<racm3:break>", "<eoss>", "<reserved08706>",
                   "<reserved08799>", "<reserved08816>", "<reserved08824>"]
CORPUS = ["a red fox in the snow at dawn", "masterpiece, film grained, best quality.",
          "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit",
          "90*90 45*80 12*34 720x720", "Generate an image of 768x768 according to the "
          "following prompt:\nA cat"]


def _need_transformers():
    try:
        import transformers
    except ImportError as e:
        pytest.skip(f"transformers not available: {e}")
    return transformers


def _bpe_tokenizer(path, specials):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(path))
    return tok


@pytest.fixture
def emu3_folder(tmp_path):
    folder = tmp_path / "emu3"
    folder.mkdir()
    _bpe_tokenizer(folder / "tokenizer.json", EMU3_SPECIALS)
    return folder


@pytest.fixture
def lumina_folder(tmp_path):
    folder = tmp_path / "lumina"
    folder.mkdir()
    _bpe_tokenizer(folder / "tokenizer.json", LUMINA_SPECIALS)
    return folder


def _hf_tokenizer(folder):
    tf = _need_transformers()
    return tf.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), bos_token="<|extra_203|>",
        eos_token="<|extra_204|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "boi_token": "<|image start|>",
                              "eoi_token": "<|image end|>",
                              "image_wrapper_token": "<|image token|>",
                              "eof_token": "<|extra_201|>"})


@pytest.mark.parametrize("text, ratio, area", [("a red fox in the snow", "1:1", 720 * 720),
                                               ("bad hands, 12 foxes", "16:9", 512 * 512),
                                               ("", "3:4", 64 * 64 * 5)])
def test_emu3_matches_transformers_processor(emu3_folder, text, ratio, area):
    hf = _hf_tokenizer(emu3_folder)
    grid = prompts.emu3_grid(ratio, area)
    ids, neg = prompts.emu3_prompt_ids(emu3_folder, text, grid, suffix="")
    # what Emu3Processor does for generation: BOS + text + BOI + "H*W" + IMG as one string
    want = hf(f"<|extra_203|>{text}<|image start|>{grid[0]}*{grid[1]}<|image token|>",
              add_special_tokens=False)["input_ids"]
    assert ids == want
    assert neg == hf(f"<|extra_203|>{prompts.EMU3_NEGATIVE_PROMPT}<|image start|>"
                     f"{grid[0]}*{grid[1]}<|image token|>", add_special_tokens=False)["input_ids"]
    try:
        from transformers import Emu3ImageProcessor, Emu3Processor
        proc = Emu3Processor(Emu3ImageProcessor(), hf)
    except Exception as e:  # Pillow (vision backend) missing
        pytest.skip(f"Emu3Processor unavailable: {e}")
    out = proc(text=text, return_for_image_generation=True, ratio=ratio, image_area=area)
    assert list(out["image_sizes"][0]) == list(grid)
    assert ids == list(out["input_ids"][0])
    out = proc(text=text + prompts.EMU3_POSITIVE_SUFFIX, return_for_image_generation=True,
               ratio=ratio, image_area=area)
    assert prompts.emu3_prompt_ids(emu3_folder, text, grid)[0] == list(out["input_ids"][0])
    out = proc(text=prompts.EMU3_NEGATIVE_PROMPT, return_for_image_generation=True,
               ratio=ratio, image_area=area)
    assert neg == list(out["input_ids"][0])


def test_emu3_template_and_errors(emu3_folder):
    tok = prompts.load_tokenizer(emu3_folder)
    sp = prompts.emu3_special_ids(tok)
    ids, neg = prompts.emu3_prompt_ids(tok, "a red fox", (90, 90))
    text = tok.encode("a red fox" + prompts.EMU3_POSITIVE_SUFFIX, add_special_tokens=False).ids
    size = tok.encode("90*90", add_special_tokens=False).ids
    assert ids == [sp["bos"], *text, sp["boi"], *size, sp["img"]]
    assert neg[0] == sp["bos"] and neg[-len(size) - 2:] == [sp["boi"], *size, sp["img"]]
    assert len(neg) != len(ids)
    assert prompts.emu3_grid() == (90, 90)
    assert prompts.emu3_grid("16:9", 518400) == (68, 120)
    with pytest.raises(ValueError, match="ratio"):
        prompts.emu3_grid("wide")
    with pytest.raises(ValueError, match="grid"):
        prompts.emu3_prompt_ids(tok, "x", (0, 4))
    with pytest.raises(TypeError):
        prompts.emu3_prompt_ids(tok, 5, (4, 4))
    with pytest.raises(TypeError):
        prompts.emu3_prompt_ids(object(), "x", (4, 4))
    # a tokenizer without Emu3's special tokens (Lumina's) is refused by name
    other = emu3_folder.parent / "other"
    other.mkdir()
    _bpe_tokenizer(other / "tokenizer.json", LUMINA_SPECIALS)
    with pytest.raises(ValueError, match=r"<\|extra_203\|>"):
        prompts.emu3_prompt_ids(other, "x", (4, 4))


def test_emu3_grid_matches_processor():
    tf = _need_transformers()
    pytest.importorskip("PIL", reason="transformers' Emu3Processor needs pillow")
    calc = tf.Emu3Processor.calculate_generate_size
    for ratio in ("1:1", "16:9", "9:16", "4:3", "21:9"):
        for area in (518400, 262144, 720 * 360):
            assert prompts.emu3_grid(ratio, area) == calc(None, ratio, area, 8)


@pytest.mark.parametrize("size", [768, (512, 768)])
def test_lumina_template(lumina_folder, size):
    tok = prompts.load_tokenizer(lumina_folder)
    ids, uncond = prompts.lumina_prompt_ids(lumina_folder, "A cat on a mat", size)
    h, w = (size, size) if isinstance(size, int) else size
    vid = tok.token_to_id
    text = f"Generate an image of {w}x{h} according to the following prompt:\nA cat on a mat"
    body = tok.encode(text, add_special_tokens=False).ids
    head = [vid("<racm3:break>"), vid(f"<reserved{8800 + h // 32:05d}>"),
            vid(f"<reserved{8800 + w // 32:05d}>")]
    assert ids == [vid("<s>"), *body, vid("<reserved08706>"), *head]
    assert uncond == head
    assert prompts.lumina_grid(size) == (2 * h // 32, 2 * w // 32)
    ids2, _ = prompts.lumina_prompt_ids(tok, "A cat on a mat", size, image_head=False)
    assert ids2 == ids[:-3]


def test_lumina_errors(lumina_folder, emu3_folder):
    with pytest.raises(ValueError, match="multiples of 32"):
        prompts.lumina_prompt_ids(lumina_folder, "x", 700)
    with pytest.raises(ValueError, match="size token"):
        prompts.lumina_prompt_ids(lumina_folder, "x", 1024)  # <reserved08832> not in the file
    with pytest.raises(ValueError, match="<s>"):
        prompts.lumina_prompt_ids(emu3_folder, "x", 768)
    with pytest.raises(FileNotFoundError):
        prompts.load_tokenizer(lumina_folder.parent)
    bad = lumina_folder.parent / "bad.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ValueError, match="tokenizer"):
        prompts.load_tokenizer(bad)
