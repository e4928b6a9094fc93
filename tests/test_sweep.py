"""zipar.sweep: grid expansion, deterministic records, checkpoint/resume, executors, CLI."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zipar
from zipar import sweep as sw
from zipar.sweep import TIMING_KEYS, SweepResult, expand_grid, sweep

TINY = dict(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=(3, 4), num_classes=3, seed=1)
SPEC = {"random": TINY}
GRID = {"policy": ["raster", "zipar", "adaptive"], "window": [1, 3], "threshold": [0.0, 0.5]}
N_CELLS = 1 + 2 + 4


def strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_same_across_processes(got, want):
    """Records of another executor: equal but for timings, and nll_bits only to float32
    accuracy (the engine's many-row teacher-forced pass goes through BLAS, whose sums depend on
    the thread count: workers run one thread)."""
    g, w = strip(got.records), strip(want.records)
    assert [r.pop("nll_bits", None) for r in g] == pytest.approx(
        [r.pop("nll_bits", None) for r in w], rel=1e-6)
    assert g == w
    for i in range(len(want)):
        assert np.array_equal(got.tokens(i), want.tokens(i))


def tokens_sum(model, tokens, labels):
    """A cheap metric with a dict result (module level: picklable for process workers)."""
    return {"sum": int(tokens.sum()), "first": int(tokens.reshape(-1)[0])}


def with_interval(model, tokens, labels):
    return {"value": float(tokens.mean()), "low": np.float32(0.5), "high": np.inf}


# ---------------------------------------------------------------------------- grid expansion

def test_expand_grid_product_order_and_irrelevant_settings():
    cells = expand_grid(GRID)
    assert len(cells) == N_CELLS
    assert [c["policy"] for c in cells] == ["raster"] + ["zipar"] * 2 + ["adaptive"] * 4
    assert all(set(c) == set(sw.SETTING_KEYS) for c in cells)
    raster = cells[0]
    assert raster["window"] is raster["threshold"] is raster["schedule"] is None
    assert [(c["window"], c["threshold"]) for c in cells[1:3]] == [(1, None), (3, None)]
    # adaptive takes window as its minimum window, first key slowest
    assert [(c["min_window"], c["threshold"], c["window"]) for c in cells[3:]] == [
        (1, 0.0, None), (1, 0.5, None), (3, 0.0, None), (3, 0.5, None)]
    assert all(c["seed"] == 0 and c["cfg_scale"] == 4.0 for c in cells)


def test_expand_grid_dedup_drops_and_defaults():
    # 4 and 4.0 are one value; greedy resets top_k / top_p
    cells = expand_grid({"policy": "zipar", "window": [2, 2], "cfg_scale": [4, 4.0],
                         "temperature": [0, 1], "top_k": [0, 5]})
    assert [(c["temperature"], c["top_k"]) for c in cells] == [(0.0, 0), (1.0, 0), (1.0, 5)]
    assert all(isinstance(c["cfg_scale"], float) for c in cells)
    # max_window < min_window is dropped
    cells = expand_grid({"policy": ["adaptive"], "min_window": [2, 4], "max_window": [3]})
    assert [(c["min_window"], c["max_window"]) for c in cells] == [(2, 3)]
    # implied policy and the seeds axis
    assert {c["policy"] for c in expand_grid({"window": [2]})} == {"zipar"}
    assert {c["policy"] for c in expand_grid({"min_window": [2]})} == {"adaptive"}
    assert {c["policy"] for c in expand_grid({"cfg_scale": [1.0]})} == {"raster"}
    assert [c["seed"] for c in expand_grid({"window": [2]}, seeds=(3, 1))] == [3, 1]
    assert [c["seed"] for c in expand_grid({"seed": [5, 6]})] == [5, 6]


@pytest.mark.parametrize("grid, exc", [
    ({"windw": [2]}, ValueError),
    ({"policy": ["zipar"]}, ValueError),                 # zipar without a window
    ({"policy": ["fast"]}, ValueError),
    ({"window": [0]}, ValueError),
    ({"window": []}, ValueError),
    ({"window": [2.5]}, TypeError),
    ({"window": [2], "schedule": ["lazy"]}, ValueError),
    ({"window": [2], "proxy": ["below"]}, ValueError),
    ({"window": [2], "proxy": [-1]}, ValueError),
    ({"window": [2], "proxy": [True]}, TypeError),
    ({"window": [2], "proxy": [2.0]}, TypeError),
    ({"window": [2], "proxy": [None]}, ValueError),
    ({"top_p": [0.0]}, ValueError),
    ({"policy": ["adaptive"], "min_window": [4], "max_window": [2]}, ValueError),  # nothing left
])
def test_expand_grid_rejects(grid, exc):
    with pytest.raises(exc):
        expand_grid(grid)


def test_expand_grid_proxies():
    cells = expand_grid({"policy": ["raster", "zipar", "adaptive"], "window": [2],
                         "proxy": ["above", "Calibrated", 5, np.int64(5), np.uint8(0)]})
    assert [c["proxy"] for c in cells] == [None] + ["above", "calibrated", 5, 0] * 2
    assert all(type(c["proxy"]) in (str, int) for c in cells[1:])
    assert sw._make_policy(cells[3]) == zipar.ZipAR(2, proxy=5)


def test_seed_given_twice_rejected():
    with pytest.raises(ValueError):
        expand_grid({"seed": [1]}, seeds=(2,))


# ---------------------------------------------------------------------------- records

def test_records_deterministic_and_batch_independent():
    a = sweep(SPEC, GRID, n_samples=5, batch_size=2, progress=False)
    b = sweep(SPEC, GRID, n_samples=5, batch_size=5, progress=False)
    c = sweep(SPEC, GRID, n_samples=5, batch_size=1, progress=False)
    assert len(a) == N_CELLS and a.cells == expand_grid(GRID)
    assert strip(a.records) == strip(b.records) == strip(c.records)
    for i in range(N_CELLS):
        assert np.array_equal(a.tokens(i), c.tokens(i))
    model = zipar.random_model(**TINY)
    H, W = model.config.grid
    for rec, cell in zip(a.records, a.cells):
        assert rec["n_samples"] == 5 and rec["raster_passes"] == H * W
        assert rec["step_reduction"] == pytest.approx(1 - rec["forward_passes"] / (H * W))
        assert rec["seconds"] > 0 and rec["nll_bits"] > 0
        json.dumps(rec, allow_nan=False)
        pol = sw._make_policy(cell)
        if cell["policy"] != "adaptive":
            assert rec["forward_passes"] == rec["forward_passes_max"] == \
                pol.expected_passes(H, W)
            assert rec["draft_acceptance"] is None
        else:
            assert rec["drafts_proposed"] > 0 and 0 <= rec["draft_acceptance"] <= 1
    # the tokens are those of one direct generate call with sample ids 0..n-1
    cell = a.cells[1]
    res = model.generate(np.arange(5) % 3, policy=sw._make_policy(cell), cfg_scale=4.0, seed=0)
    assert np.array_equal(res.tokens, a.tokens(1))
    # the default metric is the model's own NLL in bits per token
    lp = model.log_prob(np.arange(5) % 3, a.tokens(1))
    assert a.records[1]["nll_bits"] == pytest.approx(-lp.mean() / (H * W) / np.log(2))


def test_cell_generated_in_pieces_equals_whole():
    """benchmarks/bench_fidelity.py splits a cell's samples across workers with
    _generate_cell(first=...): the pieces must be the whole cell's tokens and counters."""
    model = zipar.random_model(**TINY)
    settings = expand_grid({"policy": ["adaptive"], "min_window": [1], "threshold": [0.5]})[0]
    labels = np.arange(6) % 3
    whole = sw._generate_cell(model, settings, labels, 2)
    parts = [sw._generate_cell(model, settings, labels[a:b], 2, first=a)
             for a, b in ((0, 2), (2, 6))]
    assert np.array_equal(whole[0], np.concatenate([p[0] for p in parts]))
    for k in (1, 2):   # passes and queries per image
        assert np.array_equal(whole[k], np.concatenate([p[k] for p in parts]))
    assert whole[3] == {k: parts[0][3][k] + parts[1][3][k] for k in whole[3]}
    # a piece that starts elsewhere is other samples, not the same ones again
    assert not np.array_equal(parts[0][0], sw._generate_cell(model, settings, labels[:2], 2,
                                                             first=2)[0])


def test_labels_and_custom_metrics():
    res = sweep(SPEC, {"window": [2]}, n_samples=4, labels=[2], progress=False,
                metrics={"t": tokens_sum, "m": with_interval})
    rec = res.records[0]
    assert "nll_bits" not in rec and rec["t_sum"] == int(res.tokens(0).sum())
    assert rec["t_first"] == int(res.tokens(0)[0, 0, 0])
    model = zipar.random_model(**TINY)
    direct = model.generate([2, 2, 2, 2], policy=zipar.ZipAR(2), seed=0)
    assert np.array_equal(direct.tokens, res.tokens(0))
    # key "value" names the column itself; numpy scalars become JSON numbers, inf None
    assert (rec["m"], rec["m_low"], rec["m_high"]) == (float(res.tokens(0).mean()), 0.5, None)
    assert res.metric_columns == ["t_sum", "t_first", "m", "m_low", "m_high"]


def test_result_tables_and_pareto(tmp_path):
    res = sweep(SPEC, GRID, n_samples=3, progress=False)
    front = res.pareto()                   # forward_passes vs nll_bits, both minimized
    assert front and all(r in res.records for r in front)
    xs = [r["forward_passes"] for r in front]
    assert xs == sorted(xs)
    for r in front:                        # nothing dominates a front record
        assert not any(o["forward_passes"] <= r["forward_passes"] and o["nll_bits"] <= r["nll_bits"]
                       and (o["forward_passes"] < r["forward_passes"] or
                            o["nll_bits"] < r["nll_bits"]) for o in res.records)
    assert min(res.records, key=lambda r: r["forward_passes"])["forward_passes"] == xs[0]
    best = res.pareto(x="forward_passes", y="step_reduction", maximize=["step_reduction"])
    assert len({r["forward_passes"] for r in best}) == 1
    with pytest.raises(KeyError):
        res.pareto(y="no_such_column")
    res.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 1 + N_CELLS and lines[0].split(",")[:2] == ["model", "policy"]
    res.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == res.records
    table = sw.format_table(res.records)
    assert "forward_passes" in table and len(table.splitlines()) == 2 + N_CELLS


def test_to_dataframe(monkeypatch):
    res = SweepResult([{"policy": "raster", "forward_passes": 12.0}], [{}])
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        df = res.to_dataframe()
        assert list(df.columns) == ["policy", "forward_passes"] and len(df) == 1
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        res.to_dataframe()


def test_bad_arguments():
    with pytest.raises(ValueError):
        sweep(SPEC, GRID, n_samples=0, progress=False)
    with pytest.raises(ValueError):
        sweep(SPEC, GRID, n_samples=2, executor="threads", progress=False)
    with pytest.raises(TypeError):
        sweep(42, GRID, n_samples=2, progress=False)
    with pytest.raises(FileNotFoundError):
        sweep("/no/such/checkpoint.npz", GRID, n_samples=2, progress=False)
    with pytest.raises(TypeError, match="module-level"):
        sweep(SPEC, {"window": [2]}, n_samples=2, executor="process", progress=False,
              metrics={"x": lambda m, t, lab: 0.0})
    with pytest.raises(ValueError, match="larger than the grid width"):
        sweep(SPEC, {"window": [9]}, n_samples=2, progress=False)


def test_sweep_proxies_and_recalibration(tmp_path):
    """Grid proxies "calibrated" and token ids: the records name the proxy and the token fed
    (proxy_token), the tokens are those of the policy itself, and a checkpoint saved with
    another row_start_proxy recomputes its calibrated cells only."""
    model = zipar.random_model(**TINY)
    model.row_start_proxy = 11
    path = tmp_path / "m.npz"
    model.save(path)
    grid = {"policy": ["raster", "zipar"], "window": [1], "proxy": ["left", "calibrated", 3]}
    out = tmp_path / "run"
    calls = []

    def counting(model, tokens, labels):
        calls.append(1)
        return tokens_sum(model, tokens, labels)

    res = sweep(str(path), grid, n_samples=4, out=out, progress=False, metrics={"t": counting})
    assert [(r["policy"], r["proxy"], r["proxy_token"]) for r in res.records] == [
        ("raster", None, None), ("zipar", "left", None), ("zipar", "calibrated", 11),
        ("zipar", 3, 3)]
    for i, proxy in ((1, "left"), (2, 11), (3, 3)):
        want = model.generate(np.arange(4) % 3, policy=zipar.ZipAR(1, proxy=proxy),
                              cfg_scale=4.0, seed=0).tokens
        np.testing.assert_array_equal(res.tokens(i), want)
    assert not np.array_equal(res.tokens(2), res.tokens(3))   # 11 and 3 differ somewhere
    assert len(calls) == 4 and "proxy_token" not in res.metric_columns
    model.row_start_proxy = 12                   # recalibrated: the same bytes, another token
    model.save(path)
    sw.spec._MODEL_CACHE.clear()                 # (a process keeps a spec's model loaded)
    calls.clear()
    again = sweep(str(path), grid, n_samples=4, out=out, progress=False, metrics={"t": counting})
    assert len(calls) == 1 and again.records[2]["proxy_token"] == 12
    assert again.records[3] == res.records[3]    # read back, not recomputed
    with pytest.raises(ValueError, match="row_start_proxy"):   # a model without one: at once
        sweep(SPEC, {"window": [1], "proxy": ["calibrated"]}, n_samples=1, progress=False)


# ---------------------------------------------------------------------------- checkpointing

def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    full = sweep(SPEC, GRID, n_samples=4, batch_size=3, progress=False, metrics={"t": tokens_sum})
    out = tmp_path / "run"
    k = 3
    calls = []

    def interrupting(model, tokens, labels):
        if len(calls) == k:
            raise KeyboardInterrupt
        calls.append(1)
        return tokens_sum(model, tokens, labels)

    with pytest.raises(KeyboardInterrupt):
        sweep(SPEC, GRID, n_samples=4, batch_size=3, out=out, progress=False,
              metrics={"t": interrupting})
    done = sorted(p for p in os.listdir(out) if p.endswith(".json"))
    assert len(done) == k and len([p for p in os.listdir(out) if p.endswith(".npy")]) == k
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    mtimes = {p: os.stat(out / p).st_mtime_ns for p in done}

    counted = []

    def counting(model, tokens, labels):
        counted.append(1)
        return tokens_sum(model, tokens, labels)

    resumed = sweep(SPEC, GRID, n_samples=4, batch_size=3, out=out, progress=False,
                    metrics={"t": counting})
    assert len(counted) == N_CELLS - k                    # only the missing cells ran
    assert {p: os.stat(out / p).st_mtime_ns for p in done} == mtimes
    assert strip(resumed.records) == strip(full.records)
    for i in range(N_CELLS):
        assert np.array_equal(resumed.tokens(i), full.tokens(i))

    # a third run computes nothing and returns the stored records, timings included
    counted.clear()
    again = sweep(SPEC, GRID, n_samples=4, batch_size=1, out=out, progress=False,
                  metrics={"t": counting})
    assert counted == [] and again.records == resumed.records

    # a new metric is computed from the saved tokens, without generating again
    def no_generation(*a, **kw):
        raise AssertionError("a finished cell was generated again")

    from zipar.sweep import cell as sw_cell  # where sweeps look generate_cell up

    orig = sw_cell.generate_cell
    sw_cell.generate_cell = no_generation
    try:
        more = sweep(SPEC, GRID, n_samples=4, out=out, progress=False,
                     metrics={"t": counting, "nll_bits": sw.nll_bits})
    finally:
        sw_cell.generate_cell = orig
    assert counted == [] and all(r["nll_bits"] > 0 for r in more.records)
    assert strip([{k: v for k, v in r.items() if k != "nll_bits"} for r in more.records]) == \
        strip(resumed.records)

    # other settings hash to other files
    sweep(SPEC, GRID, n_samples=5, out=out, progress=False, metrics={"t": counting})
    assert len(counted) == N_CELLS


def test_callback_and_interrupt_keeps_finished_cells(tmp_path):
    seen = []

    def callback(i, rec):
        seen.append(i)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(SPEC, GRID, n_samples=2, out=tmp_path, progress=False, callback=callback)
    assert seen == [0, 1] and len(list(tmp_path.glob("*.json"))) == 2


# ---------------------------------------------------------------------------- executors

def test_process_executor_equals_inprocess(tmp_path):
    grid = {"policy": ["zipar", "adaptive"], "window": [1, 2], "temperature": [1.0]}
    ref = sweep(SPEC, grid, n_samples=5, batch_size=2, progress=False,
                metrics={"t": tokens_sum, "nll_bits": sw.nll_bits})
    got = sweep(SPEC, grid, n_samples=5, batch_size=3, executor="process", workers=2,
                out=tmp_path, progress=False, metrics={"t": tokens_sum, "nll_bits": sw.nll_bits})
    assert_same_across_processes(got, ref)


def test_dask_local_cluster_equals_inprocess(tmp_path):
    pytest.importorskip("dask.distributed")
    grid = {"policy": ["raster", "zipar"], "window": [2]}
    ref = sweep(SPEC, grid, n_samples=4, progress=False)
    got = sweep(SPEC, grid, n_samples=4, executor="dask", workers=2, out=tmp_path,
                progress=False)
    assert_same_across_processes(got, ref)


def test_dask_missing_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ImportError, match="dask"):
        sweep(SPEC, {"window": [2]}, n_samples=1, executor="dask", progress=False)


# ---------------------------------------------------------------------------- sweep files / CLI

def write_toml(path, out=None):
    path.write_text(textwrap.dedent(f"""
        [model]
        random = {{ dim = 32, n_layer = 1, n_head = 2, vocab_size = 16, grid = [3, 4], \
num_classes = 3, seed = 1 }}

        [sweep]
        n_samples = 4
        batch_size = 2
        seeds = [0, 1]
        {f'out = "{out}"' if out else ""}

        [grid]
        policy = ["raster", "zipar"]
        window = [2]
        cfg_scale = [1.0, 2]
    """))


def test_cli_sweep(tmp_path):
    cfg = tmp_path / "sweep.toml"
    write_toml(cfg)
    out = tmp_path / "out"
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(zipar.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "zipar", "sweep", str(cfg), "--out", str(out),
                           "--quiet"], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((out / "records.json").read_text())
    assert len(records) == 2 * 2 * 2                      # policy x cfg_scale x seeds
    assert len((out / "records.csv").read_text().splitlines()) == 1 + len(records)
    assert "forward_passes" in proc.stdout and "zipar" in proc.stdout
    # the same sweep in-process from the file: identical records (read back from the checkpoint)
    res = sw.run_sweep_file(str(cfg), out=str(out), progress=False)
    assert res.records == records


def test_sweep_file_out_relative_to_file(tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    write_toml(cfg, out="results")
    res = sw.run_sweep_file(str(cfg), progress=False)
    assert (tmp_path / "results" / "records.csv").exists() and len(res) == 8
    assert "records.csv" in capsys.readouterr().out


def test_sweep_file_proxies(tmp_path):
    model = zipar.random_model(**TINY)
    model.row_start_proxy = 2
    model.save(tmp_path / "m.safetensors")
    cfg = tmp_path / "p.toml"
    cfg.write_text('[model]\nspec = "m.safetensors"\n[sweep]\nn_samples = 2\n'
                   '[grid]\nwindow = [1]\nproxy = ["above", "calibrated", 7]\n')
    res = sw.run_sweep_file(str(cfg), progress=False)
    assert [(r["proxy"], r["proxy_token"]) for r in res.records] == [
        ("above", None), ("calibrated", 2), (7, 7)]


def test_sweep_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nn_samples = 2\nbogus = 1\n[grid]\nwindow = [2]\n')
    with pytest.raises(ValueError, match="bogus"):
        sw.run_sweep_file(str(bad))
    bad.write_text('[sweep]\nbatch_size = 2\n[grid]\nwindow = [2]\n')
    with pytest.raises(ValueError, match="n_samples"):
        sw.run_sweep_file(str(bad))


def test_example_sweep_file_parses():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "benchmarks", "sweep_example.toml")
    if not os.path.exists(path):
        pytest.skip("benchmarks/ not next to the tests")
    cfg = sw._read_toml(path)
    assert cfg["model"]["spec"] == "builtin"
    cells = expand_grid(cfg["grid"], cfg["sweep"].get("seeds", (0,)))
    assert {c["policy"] for c in cells} == {"raster", "zipar", "adaptive"}


# ---------------------------------------------------------------------------- zipar.eval metrics

def test_eval_metric_wrappers(monkeypatch):
    """The built-in model's default metrics on zipar.eval's real API, with a random classifier
    standing in for the shipped one (the test set must be installed)."""
    zeval = pytest.importorskip("zipar.eval")
    from zipar.tokenizer import GreyTokenizer

    d = os.environ.get("ZIPAR_FMNIST_DIR", zeval.DATASET_DIR)
    if not os.path.exists(os.path.join(d, "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST test set not installed")
    rng = np.random.default_rng(0)
    shapes = {"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3),
              "conv2.bias": (64,), "fc1.weight": (128, 3136), "fc1.bias": (128,),
              "fc2.weight": (10, 128), "fc2.bias": (10,)}
    w = {k: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]) if len(s) > 1 else 10))
         .astype(np.float32) for k, s in shapes.items()}
    clf = zeval.Classifier(w, {"input_mean": 0.3, "input_std": 0.35, "levels": 16})
    monkeypatch.setattr(zeval.Classifier, "load_default", classmethod(lambda cls, **kw: clf))
    monkeypatch.setattr(zeval, "_default_classifier", clf)
    import zipar.fmnist.metrics

    monkeypatch.setattr(zipar.fmnist.metrics, "_REFERENCE_FEATURES", {})
    model = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=28,
                               num_classes=10, seed=3)
    model.tokenizer = GreyTokenizer(16)
    labels = np.arange(6) % 3
    tokens = model.generate(labels, policy=zipar.ZipAR(8), seed=0).tokens
    acc = sw.eval_class_accuracy(model, tokens, labels)
    assert 0.0 <= acc <= 1.0
    fid = sw.eval_fid_proxy(model, tokens, labels)
    assert set(fid) == {"value", "low", "high"} and fid["value"] > 0
    assert sw.eval_diversity(model, tokens, labels) > 0
    assert sw.eval_fid_proxy(model, tokens[:1], labels[:1])["value"] is None
