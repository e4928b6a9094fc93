"""The command line, ``python3 -m zipar {convert,generate,info}``, run as a subprocess.

Each command runs in a scratch directory with PYTHONPATH pointing at the zipar package the tests
import (the installed one, else the repository). Tiny fixtures and small grids keep it fast.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import zipar
from zipar import checkpoint as ck
from zipar import png

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
C2I = os.path.join(FIX, "c2i_tiny.pt")     # dim 64, 2 layers, 4 heads: pass --n-head 4
T2I = os.path.join(FIX, "t2i_tiny_f16.pt")  # dim 32, 2 layers, 4 heads, 120 x 2048 captions
VQ = os.path.join(FIX, "vq_tiny.pt")        # 4 upsamples: 16 pixels per token side
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(zipar.__file__)))


def run_cli(cwd, *args, check=True):
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_PARENT + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "zipar", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"zipar {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for f in fragments:
        assert f in lines[0], lines[0]


# ============================================================================ convert

@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_convert_round_trip(tmp_path, suffix):
    out = tmp_path / ("c2i" + suffix)
    proc = run_cli(tmp_path, "convert", C2I, out.name, "--n-head", "4", "--grid", "3")
    assert out.exists() and out.name in proc.stdout
    original = ck.load_llamagen(C2I, n_head=4, grid=3)
    converted = ck.load_llamagen(out)            # the config travels with the weights
    assert converted.config == original.config
    labels = [0, 7]
    tokens = np.random.default_rng(0).integers(0, 100, size=(2, 3, 3))
    for cfg_scale in (1.0, 4.0):
        np.testing.assert_array_equal(converted.logits(labels, tokens, cfg_scale=cfg_scale),
                                      original.logits(labels, tokens, cfg_scale=cfg_scale))


def test_convert_infers_grid_from_file_name(tmp_path):
    shutil.copy(C2I, tmp_path / "c2i_tiny_384.pt")
    run_cli(tmp_path, "convert", "c2i_tiny_384.pt", "m.npz", "--n-head", "4")
    assert ck.load_llamagen(tmp_path / "m.npz").config.grid == (24, 24)


# ============================================================================ generate

def _policy_ns(**kw):
    base = dict(policy=None, window=None, schedule=None, proxy=None, max_window=None,
                threshold=0.0)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.parametrize("name", ["vq", "pixels"])
def test_main_job_runs_the_best_measured_zipar(name):
    """The built-in models' records name their best measured ZipAR setting; the main job runs
    it beside raster unless --window, --schedule or --proxy asks for another."""
    from zipar import __main__ as cli
    from zipar.fmnist.builtin import best_zipar, default_config

    best = best_zipar(name)
    assert best is not None and 0.0 < best["step_reduction"] < 1.0
    W = default_config(name).W
    raster, fast = cli._policies(_policy_ns(), W, best)
    assert raster == zipar.Raster()
    assert fast == zipar.ZipAR(best["window"], schedule=best["schedule"], proxy=best["proxy"])
    assert cli._policies(_policy_ns(proxy="left"), W, best)[1] == zipar.ZipAR(W // 4,
                                                                              proxy="left")
    assert cli._policies(_policy_ns(window=3), W, best)[1] == zipar.ZipAR(3)
    assert cli._policies(_policy_ns(), W, None)[1] == zipar.ZipAR(W // 4)
    (only,) = cli._policies(_policy_ns(policy="zipar", window=2, schedule="paper"), W, best)
    assert only == zipar.ZipAR(2, schedule="paper")


def test_generate_c2i_png(tmp_path):
    grid = 3
    proc = run_cli(tmp_path, "generate", "--plain", "--checkpoint", C2I, "--n-head", 4,
                   "--grid", grid,
                   "--vq", VQ, "--labels", 1, 2, "--policy", "zipar", "--window", 2,
                   "--out", "x.png", "--quiet", "--scale", 1, "--seed", 5)
    assert "ZipAR" in proc.stdout and proc.stderr == ""
    image = png.read_png(tmp_path / "x.png")
    # one tile per label stacked vertically, 2-pixel borders (png.image_grid layout)
    side = 16 * grid
    assert image.shape == (2 * (side + 2) + 2, side + 2 + 2, 3)
    summary = json.loads(png.read_png_text(tmp_path / "x.png")["zipar"])
    assert len(summary) == 1
    entry = summary[0]
    assert entry["policy"] == {"policy": "ZipAR", "window": 2, "schedule": "eager",
                               "proxy": "above"}
    assert entry["passes"] == zipar.ZipAR(2).expected_passes(grid, grid)
    config = entry["config"]
    assert config["labels"] == [1, 2] and config["seed"] == 5
    assert config["model"]["grid"] == [grid, grid] and config["model"]["dim"] == 64
    assert config["cfg_scale"] == 4.0 and config["top_k"] == 2000
    # the PNG holds what the library makes from the same config
    from zipar.vq import VQDecoder

    model = ck.load_llamagen(C2I, n_head=4, grid=grid)
    model.decoder = VQDecoder(ck.read_vq_state_dict(VQ))
    res = model.generate([1, 2], policy=zipar.ZipAR(2), cfg_scale=4.0, top_k=2000, seed=5)
    np.testing.assert_array_equal(image[2:2 + side, 2:2 + side], res.images[0])
    np.testing.assert_array_equal(image[side + 4:2 * side + 4, 2:2 + side], res.images[1])


def test_generate_default_scale_upsamples_small_images(tmp_path):
    run_cli(tmp_path, "generate", "--plain", "--checkpoint", C2I, "--n-head", 4, "--grid", 2,
            "--vq", VQ, "--labels", 3, "--policy", "raster", "--out", "y.png", "--quiet")
    side = 16 * 2
    h, w = png.read_png(tmp_path / "y.png").shape[:2]
    assert (h, w) == (4 * (side + 4), 4 * (side + 4))


def test_generate_t2i_captions(tmp_path):
    caps = np.random.default_rng(0).standard_normal((2, 120, 2048)).astype(np.float16)
    np.save(tmp_path / "emb.npy", caps)
    proc = run_cli(tmp_path, "generate", "--plain", "--checkpoint", T2I, "--n-head", 4, "--grid", 2,
                   "--captions", "emb.npy", "--policy", "zipar", "--window", 1,
                   "--out", "t.png", "--quiet", "--scale", 1, "--seed", 2)
    assert "no decoder attached" in proc.stdout
    image = png.read_png(tmp_path / "t.png")
    assert image.shape[:2] == (2 * (2 + 2) + 2, 2 + 2 + 2)   # token grids as grey pixels
    config = json.loads(png.read_png_text(tmp_path / "t.png")["zipar"])[0]["config"]
    assert config["labels"] is None and config["model"]["caption_dim"] == 2048
    model = ck.load_llamagen(T2I, n_head=4, grid=2)
    res = model.generate(captions=caps, policy=zipar.ZipAR(1), top_k=2000, seed=2)
    assert image.ndim == 2

    def grey(t):  # tokens spread over 0..255
        return (t * 255.0 / 99).round().astype(np.uint8)

    np.testing.assert_array_equal(image[2:4, 2:4], grey(res.tokens[0]))
    np.testing.assert_array_equal(image[6:8, 2:4], grey(res.tokens[1]))


def test_generate_proxies(tmp_path):
    model = ck.load_llamagen(C2I, n_head=4, grid=3)
    model.row_start_proxy = 42
    model.save(tmp_path / "m.npz")
    for proxy, want in (("calibrated", {"proxy": "calibrated", "proxy_token": 42}),
                        ("7", {"proxy": 7}), ("left", {"proxy": "left"})):
        run_cli(tmp_path, "generate", "--plain", "--checkpoint", "m.npz", "--labels", 1, 2,
                "--policy", "zipar", "--window", 1, "--proxy", proxy, "--out", "p.png",
                "--quiet", "--seed", 5)
        entry = json.loads(png.read_png_text(tmp_path / "p.png")["zipar"])[0]
        assert entry["policy"] == dict({"policy": "ZipAR", "window": 1, "schedule": "eager"},
                                       **want)
    proc = run_cli(tmp_path, "info", "m.npz")
    assert "calibrated row-start proxy token 42" in proc.stdout
    common = ("generate", "--checkpoint", C2I, "--n-head", 4, "--grid", 2, "--quiet",
              "--labels", 1, "--policy", "zipar", "--window", 1, "--proxy")
    assert_one_line_error(run_cli(tmp_path, *common, 100, check=False), "proxy token 100",
                          "valid ids are 0..99")
    assert_one_line_error(run_cli(tmp_path, *common, "calibrated", check=False),
                          "row_start_proxy", "calibrate_proxy")
    for bad, what in (("-1", "negative"), ("nearest", "invalid choice")):
        proc = run_cli(tmp_path, *common, bad, check=False)
        assert proc.returncode == 2 and what in proc.stderr and "Traceback" not in proc.stderr


# ============================================================================ info

def test_info_prints_blas(tmp_path):
    proc = run_cli(tmp_path, "info")
    blas = [line for line in proc.stdout.splitlines() if line.strip().startswith("BLAS")]
    assert len(blas) == 1 and zipar.build_info()["blas"] in blas[0]


# ============================================================================ errors

def test_missing_checkpoint(tmp_path):
    proc = run_cli(tmp_path, "generate", "--checkpoint", "nope.pt", "--quiet", check=False)
    assert_one_line_error(proc, "nope.pt")
    proc = run_cli(tmp_path, "convert", "nope.pt", "out.npz", check=False)
    assert_one_line_error(proc, "nope.pt")
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04" + b"\0" * 40])
def test_corrupt_checkpoint(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    proc = run_cli(tmp_path, "generate", "--checkpoint", "bad.pt", "--quiet", check=False)
    assert_one_line_error(proc, "bad.pt")


def test_truncated_checkpoint(tmp_path):
    data = open(C2I, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    proc = run_cli(tmp_path, "convert", "cut.pt", "o.npz", "--n-head", 4, check=False)
    assert_one_line_error(proc, "cut.pt")


def test_unsafe_checkpoint_refused(tmp_path):
    proc = run_cli(tmp_path, "convert", os.path.join(FIX, "malicious_exec.pt"), "o.npz",
                   check=False)
    assert_one_line_error(proc, "builtins.exec")
    assert not (tmp_path / "zipar_pwned_exec").exists()


def test_bad_values(tmp_path):
    common = ("generate", "--checkpoint", C2I, "--n-head", 4, "--grid", 2, "--quiet")
    assert_one_line_error(run_cli(tmp_path, *common, "--labels", 10, check=False), "labels")
    assert_one_line_error(run_cli(tmp_path, *common, "--labels", 1, "--policy", "zipar",
                                  "--window", 3, check=False), "window")
    assert_one_line_error(run_cli(tmp_path, *common, "--top-p", 0, check=False), "top_p")
    assert_one_line_error(run_cli(tmp_path, *common, "--captions", "none.npy", check=False),
                          "none.npy")
    np.save(tmp_path / "flat.npy", np.zeros(3, np.float32))
    assert_one_line_error(run_cli(tmp_path, "generate", "--checkpoint", T2I, "--n-head", 4,
                                  "--grid", 2, "--captions", "flat.npy", check=False),
                          "flat.npy")
    assert_one_line_error(run_cli(tmp_path, "generate", "--checkpoint", C2I, "--quiet",
                                  check=False), "n_head")


def test_argparse_errors_exit_2(tmp_path):
    proc = run_cli(tmp_path, "generate", "--policy", "nonsense", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli(tmp_path, check=False)
    assert proc.returncode == 2


# ============================================================================ grid from name

@pytest.mark.parametrize("name,grid", [("c2i_tiny_256.pt", 16), ("c2i_tiny_384.pt", 24),
                                       ("c2i_L_512.pt", 32), ("c2i_tiny_3840.pt", 16),
                                       ("c2i_256_384.pt", 16), ("c2i_tiny.pt", 16)])
def test_load_llamagen_grid_from_file_name(tmp_path, name, grid):
    path = tmp_path / name
    shutil.copy(C2I, path)
    assert ck.load_llamagen(path, n_head=4).config.grid == (grid, grid)
    assert ck.load_llamagen(str(path), n_head=4, grid=5).config.grid == (5, 5)  # grid= wins


def test_stored_config_beats_file_name(tmp_path):
    model = ck.load_llamagen(C2I, n_head=4, grid=3)
    model.save(tmp_path / "c2i_384.npz")
    assert ck.load_llamagen(tmp_path / "c2i_384.npz").config.grid == (3, 3)
    assert ck.grid_from_filename(tmp_path / "c2i_384.npz") == 24
    assert ck.grid_from_filename("/some_512/dir/c2i.pt") is None   # the base name only


def test_generate_kv_dtype_flag(tmp_path):
    run_cli(tmp_path, "generate", "--builtin", "vq", "--labels", 3, "--policy", "raster",
            "--kv-dtype", "bfloat16", "--out", "b.png", "--quiet", "--seed", 2)
    config = json.loads(png.read_png_text(tmp_path / "b.png")["zipar"])[0]["config"]
    assert config["kv_dtype"] == "bfloat16"
    proc = run_cli(tmp_path, "generate", "--builtin", "vq", "--kv-dtype", "float16",
                   "--out", "c.png", check=False)
    assert proc.returncode != 0 and "--kv-dtype" in proc.stderr
