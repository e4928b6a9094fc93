"""The package's layering, read from the source with ast (no import is executed).

Every ``import`` / ``from ... import`` of a zipar module inside zipar/ (also inside functions) is
an edge. The test fails when a module imports a module of a higher layer, or when the modules'
imports form a loop. The layers, lowest first (docs/architecture.md):

    binding  zipar._ext                          loads the C extension zipar._core lazily
    io       zipar.io.*                          file formats, NumPy only
    engine   config, _checks, sampling, policies, session, model, calibration, runtime
    families zipar.families.*                    LlamaGen checkpoints, VQ-16
    tools    zipar.reference.*, zipar.fmnist.*, zipar.sweep.*, zipar.__main__
    api      zipar (the package face) and the one-release alias modules

Within a layer imports are allowed in one direction only (no loops); the order of the tools is
reference, fmnist, sweep, cli.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zipar")

# (layer rank, module-name prefixes); a module belongs to the first entry whose prefix matches
LAYERS = [
    (0, ("zipar._ext", "zipar._core")),
    (1, ("zipar.io",)),
    (2, ("zipar.config", "zipar._checks", "zipar.sampling", "zipar.policies", "zipar.session",
         "zipar.model", "zipar.calibration", "zipar.runtime")),
    (3, ("zipar.families",)),
    (4, ("zipar.reference",)),
    (5, ("zipar.fmnist",)),
    (6, ("zipar.sweep",)),
    (7, ("zipar.__main__",)),
]
ALIASES = ("zipar.checkpoint", "zipar.vq", "zipar.eval", "zipar.builtin", "zipar.tokenizer",
           "zipar.png", "zipar.sjd")
API = 8


def layer_of(module: str) -> int:
    if module == "zipar" or module in ALIASES:
        return API
    for rank, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def modules():
    """{module name: path} of every .py file of the package."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = path
    return out


def imports(name: str, path: str, known) -> set:
    """zipar modules imported by one module (resolved against the known module names)."""
    is_pkg = path.endswith("__init__.py")
    package = name if is_pkg else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import sub" imports the submodule when one of that name exists
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        for t in targets:
            if t == "zipar" or t.startswith("zipar."):
                while t not in known and "." in t:  # zipar.io.png.encode_png -> zipar.io.png
                    t = t.rpartition(".")[0]
                if t != name:
                    found.add(t)
    return found


EXTENSIONS = {"zipar._core"}  # compiled modules: known names, no source to parse


def graph():
    mods = modules()
    known = set(mods) | EXTENSIONS
    return {name: imports(name, path, known) for name, path in mods.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_upward_import():
    bad = []
    for mod, deps in graph().items():
        for dep in deps:
            if dep == "zipar._core":
                continue
            if layer_of(dep) > layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_loop():
    g = graph()
    state = {}
    stack = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            # a package's __init__ importing its own submodules is how packages re-export
            if state.get(d) == 1 and not m.startswith(d + "."):
                loop = stack[stack.index(d):] + [d]
                pytest.fail("import loop: " + " -> ".join(loop))
            if d in g and d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_only_the_binding_layer_imports_the_extension():
    for mod, deps in graph().items():
        if "zipar._core" in deps:
            assert mod == "zipar._ext", f"{mod} imports zipar._core directly; use zipar._ext.core()"


def test_the_checker_sees_violations(tmp_path):
    """The graph builder resolves relative imports, function-level imports and submodules."""
    known = {"zipar", "zipar.io", "zipar.io.npz", "zipar.model", "zipar.sweep", "zipar.sweep.cell"}
    src = tmp_path / "npz.py"
    src.write_text("import os\nfrom ..model import Model\n\n\ndef f():\n"
                   "    from zipar.sweep import cell\n    from . import npz\n")
    found = imports("zipar.io.npz", str(src), known)
    assert found == {"zipar.model", "zipar.sweep.cell"}
    assert layer_of("zipar.sweep.cell") > layer_of("zipar.io.npz")
