"""Execute the example notebooks (notebooks/*.ipynb) with nbclient at their SMALL settings.

Each notebook runs in a fresh python3 kernel whose working directory is a temporary folder, with
ZIPAR_NB_SMALL=1 and, when zipar is not installed, the folder holding the zipar package that
these tests import on PYTHONPATH, so the kernel uses the same build. A cell that raises fails the
test. Skipped (with the reason) when nbclient, nbformat or ipykernel is missing, when there is no
python3 kernel, or when the built-in model's data are absent.
"""

import json
import os
import sys
import time

import pytest

import zipar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ["01_quickstart.ipynb", "02_ablation_sweep.ipynb", "03_spatial_locality.ipynb",
             "04_custom_policy.ipynb", "05_families.ipynb"]
CELL_TIMEOUT = 300


def _builtin_data_present() -> bool:
    """The default (VQ) built-in model's GPT and tokenizer files are there (notebooks 01-04)."""
    data = os.path.join(os.path.dirname(os.path.abspath(zipar.__file__)), "data")
    return all(os.path.exists(os.path.join(data, f))
               for f in ("fmnist_vq_gpt.npz", "fmnist_vq_tokenizer.npz", "fmnist_vq.json"))


def _kernel_env() -> dict:
    """The environment of the notebook kernels: SMALL settings, and the same zipar as here."""
    env = dict(os.environ)
    env["ZIPAR_NB_SMALL"] = "1"
    parent = os.path.dirname(os.path.dirname(os.path.abspath(zipar.__file__)))
    installed = os.path.basename(parent) in ("site-packages", "dist-packages")
    if not installed:
        env["PYTHONPATH"] = os.pathsep.join([parent] + [p for p in env.get("PYTHONPATH", "")
                                                        .split(os.pathsep) if p])
    return env


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        pytest.skip(f"{module} is not installed (pip install nbclient nbformat ipykernel)")


def test_notebooks_are_stripped():
    """Committed notebooks carry no outputs and no execution counts."""
    for name in NOTEBOOKS:
        with open(os.path.join(NB_DIR, name), encoding="utf-8") as f:
            nb = json.load(f)
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [], f"{name}: a code cell has outputs"
                assert cell["execution_count"] is None, f"{name}: a code cell has a count"


def test_notebooks_match_generator(tmp_path):
    """notebooks/*.ipynb are what notebooks/make_notebooks.py writes."""
    _need("nbformat")
    sys.path.insert(0, NB_DIR)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True   # no notebooks/__pycache__
    try:
        import make_notebooks
    finally:
        sys.path.remove(NB_DIR)
        sys.dont_write_bytecode = saved
    make_notebooks.write_all(str(tmp_path))
    for name in NOTEBOOKS:
        with open(os.path.join(NB_DIR, name), encoding="utf-8") as f:
            committed = f.read()
        with open(tmp_path / name, encoding="utf-8") as f:
            fresh = f.read()
        assert committed == fresh, (f"{name} differs from make_notebooks.py's output: edit the "
                                    "generator and run python3 notebooks/make_notebooks.py")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    nbformat = _need("nbformat")
    nbclient = _need("nbclient")
    _need("ipykernel")
    if not _builtin_data_present():
        pytest.skip("the built-in VQ model's data (zipar/data/fmnist_vq_*) are absent")
    if name == "05_families.ipynb":
        pytest.importorskip("tokenizers", reason="05_families' text prompts need tokenizers")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (python3 -m ipykernel install --user)")

    nb = nbformat.read(os.path.join(NB_DIR, name), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=_kernel_env())
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{name}: a cell raised\n{e}")
    seconds = time.perf_counter() - t0
    print(f"\n{name}: executed in {seconds:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
