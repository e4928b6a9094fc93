"""Use the installed zipar when there is one; else the repository (after an in-place build)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    from zipar import _ext   # the binding is loaded on first use: load it now

    _ext.core()
except ImportError:  # no build, or an older install without zipar._ext: forget all of it
    for name in [m for m in sys.modules if m == "zipar" or m.startswith("zipar.")]:
        del sys.modules[name]
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def families_tiny(tmp_path_factory):
    """(folder, fixtures, module) of the tiny Emu3 / Chameleon checkpoints that
    tests/families_tiny.py builds with transformers, once per session (about 20 s); skips
    without torch, transformers or safetensors."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        import families_tiny
    finally:
        sys.path.remove(here)
    out = str(tmp_path_factory.mktemp("families_tiny"))
    return out, families_tiny.build(out), families_tiny
