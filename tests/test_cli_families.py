"""``zipar generate --model`` and ``zipar info PATH`` on tiny random Emu3-Gen / Lumina-mGPT
folders (zipar.families.tiny) and the LlamaGen fixture, run as subprocesses (tests/test_cli.py's
helpers). The PNG's tiles are compared with what the library makes from the same settings."""

import json

import numpy as np
import pytest

try:
    import tokenizers  # noqa: F401
except ImportError as e:
    pytest.skip(f"tokenizers not available: {e}", allow_module_level=True)

import zipar  # noqa: E402
from zipar import png  # noqa: E402
from zipar.families.tiny import write_tiny_emu3, write_tiny_lumina  # noqa: E402

from test_cli import C2I, assert_one_line_error, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_families")
    return dict(emu3=write_tiny_emu3(d / "emu3"), lumina=write_tiny_lumina(d / "lumina"),
                bare=write_tiny_emu3(d / "bare", tokenizer=False, vq=False))


@pytest.mark.parametrize("family", ["emu3", "lumina"])
def test_generate_text_prompts_png_matches_library(tmp_path, folders, family):
    prompts = ["a red fox", "a cat in the snow"]
    proc = run_cli(tmp_path, "generate", "--model", folders[family], "--prompt", prompts[0],
                   "--prompt", prompts[1], "--policy", "zipar", "--window", 2, "--grid", 4,
                   "--plain", "--scale", 1, "--seed", 7, "--out", "fox.png")
    passes = zipar.ZipAR(2).expected_passes(4, 4)
    assert f": {passes} passes (raster 16" in proc.stdout and " s for 2 images" in proc.stdout
    try:
        import tqdm  # noqa: F401
        assert "generate" in proc.stderr  # the progress bar on stderr
    except ImportError:
        pass
    image = png.read_png(tmp_path / "fox.png")
    assert image.shape == (2 * (8 + 2) + 2, 8 + 4, 3)  # two 8x8 tiles, png.image_grid borders
    meta = json.loads(png.read_png_text(tmp_path / "fox.png")["zipar"])
    assert meta["family"] == ("emu3" if family == "emu3" else "chameleon")
    assert meta["prompt"] == prompts and meta["model"] == str(folders[family])
    (run,) = meta["runs"]
    assert run["passes"] == passes and run["policy"]["window"] == 2
    assert run["config"]["seed"] == 7 and run["config"]["grid"] == [4, 4]
    res = zipar.load(folders[family]).generate(prompt=prompts, grid=(4, 4),
                                               policy=zipar.ZipAR(2), seed=7)
    np.testing.assert_array_equal(image[2:10, 2:10], res.images[0])
    np.testing.assert_array_equal(image[12:20, 2:10], res.images[1])


def test_generate_default_policies_annotated_and_token_ids(tmp_path, folders):
    proc = run_cli(tmp_path, "generate", "--model", folders["bare"], "--prompt-ids",
                   "43,14,15,46,5,11,5,45", "--grid", 4, "--cfg-scale", 1, "--quiet",
                   "--out", "ids.png")
    lines = [ln for ln in proc.stdout.splitlines() if " passes (raster " in ln]
    assert len(lines) == 2 and lines[0].startswith('{"policy": "Raster"}: 16 passes')
    assert "grey images" in proc.stdout  # no VQ weights in this folder
    meta = json.loads(png.read_png_text(tmp_path / "ids.png")["zipar"])
    assert meta["prompt_ids"] == [[43, 14, 15, 46, 5, 11, 5, 45]]
    assert [r["policy"]["policy"] for r in meta["runs"]] == ["Raster", "ZipAR"]
    assert meta["runs"][0]["config"]["cfg_scale"] == 1.0


def test_generate_no_decode_writes_code_grids(tmp_path, folders):
    proc = run_cli(tmp_path, "generate", "--model", folders["emu3"], "--prompt", "a fox",
                   "--grid", 4, "--policy", "raster", "--no-decode", "--plain", "--scale", 1,
                   "--quiet", "--seed", 1, "--out", "codes.png")
    assert "--no-decode: writing token grids as grey images" in proc.stdout
    image = png.read_png(tmp_path / "codes.png")
    codes = zipar.load(folders["emu3"]).generate(prompt="a fox", grid=(4, 4), seed=1,
                                                 decode_images=False).tokens[0]
    grey = image[2:6, 2:6]
    want = np.round(codes * 255.0 / 31).astype(np.uint8)
    np.testing.assert_array_equal(grey if grey.ndim == 2 else grey[..., 0], want)


def test_generate_llamagen_through_model(tmp_path):
    args = ["--n-head", 4, "--grid", 3, "--labels", 1, 2, "--policy", "zipar", "--window", 1,
            "--plain", "--scale", 1, "--quiet", "--seed", 2]
    run_cli(tmp_path, "generate", "--model", C2I, *args, "--out", "a.png")
    run_cli(tmp_path, "generate", "--checkpoint", C2I, *args, "--out", "b.png")
    np.testing.assert_array_equal(png.read_png(tmp_path / "a.png"),
                                  png.read_png(tmp_path / "b.png"))


def test_generate_errors(tmp_path, folders):
    # the output path is checked before the model is even looked for
    assert_one_line_error(run_cli(tmp_path, "generate", "--model", tmp_path / "nothing",
                                  "--prompt", "x", "--out", "no/such/dir/x.png", check=False),
                          "does not exist")
    assert_one_line_error(run_cli(tmp_path, "generate", "--model", folders["bare"], "--prompt",
                                  "a fox", "--grid", 4, "--out", "x.png", check=False),
                          "no tokenizer.json")
    assert_one_line_error(run_cli(tmp_path, "generate", "--model", folders["emu3"], "--prompt",
                                  "a fox", "--prompt-ids", "1,2", "--out", "x.png", check=False),
                          "one of the two")
    assert_one_line_error(run_cli(tmp_path, "generate", "--model", folders["emu3"], "--prompt",
                                  "a fox", "--labels", 3, "--out", "x.png", check=False),
                          "--labels is for LlamaGen")
    assert_one_line_error(run_cli(tmp_path, "generate", "--model", C2I, "--n-head", 4,
                                  "--prompt", "a fox", "--out", "x.png", check=False),
                          "--labels")
    assert_one_line_error(run_cli(tmp_path, "generate", "--model", folders["bare"],
                                  "--prompt-ids", "1,x", "--out", "x.png", check=False),
                          "--prompt-ids")
    assert not (tmp_path / "x.png").exists()


def test_info_families_and_llamagen(tmp_path, folders):
    out = run_cli(tmp_path, "info", folders["emu3"]).stdout
    n = zipar.load(folders["emu3"]).n_params
    assert "family:   emu3" in out and f"{n / 1e6:.2f}M decoder parameters" in out
    assert "dtype:    float32 on disk" in out and "grid:     90x90 codes by default" in out
    assert "<|extra_203|>=43 a=14 red=15 fox=16" in out and "<|image token|>=45" in out
    assert "unconditional (" in out and "lowres=26" in out  # Emu3's negative prompt
    out = run_cli(tmp_path, "info", folders["lumina"], "--grid", 4).stdout
    assert "family:   chameleon" in out and "vqgan.safetensors" in out
    assert ("<racm3:break>=21 <reserved08802>=26 <reserved08802>=26" in out
            and "<reserved08706>=23" in out)
    out = run_cli(tmp_path, "info", folders["bare"]).stdout
    assert "no tokenizer.json" in out and "none in the folder" in out
    out = run_cli(tmp_path, "info", C2I, "--n-head", 4, "--grid", 3).stdout
    assert "family:   llamagen (c2i)" in out and "grid:     3x3" in out
    assert_one_line_error(run_cli(tmp_path, "info", tmp_path / "missing", check=False),
                          "no such folder")


def test_repo_id_through_the_hub_cache(tmp_path, monkeypatch):
    """--model / info PATH take a repo id found in $HF_HUB_CACHE (nothing is downloaded)."""
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-lumina"
    write_tiny_lumina(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = run_cli(tmp_path, "info", "acme/tiny-lumina").stdout
    assert "family:   chameleon" in out and "snapshots" in out
    run_cli(tmp_path, "generate", "--model", "acme/tiny-lumina", "--prompt", "a cat", "--grid", 4,
            "--policy", "raster", "--quiet", "--out", "cat.png")
    assert (tmp_path / "cat.png").exists()
    assert_one_line_error(run_cli(tmp_path, "info", "acme/absent", check=False), "cache")
