"""Hostile files: the committed corpus (tests/hostile/files, made by make_hostile.py) and a
seeded, time-bounded fuzz of the three checkpoint formats. Every file is loaded in a worker
process (tests/hostile/worker.py) so that a crash or a hang is reported with the file that caused
it. The only acceptable failure is CheckpointError (a ValueError); after every file the
legitimate fixtures must still load to the same bytes and the unpickler's allow-list must be
unchanged; no hostile pickle may run code."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE = os.path.join(HERE, "hostile")
FILES = os.path.join(HOSTILE, "files")
WORKER = os.path.join(HOSTILE, "worker.py")
ROOT = os.path.dirname(HERE)

with open(os.path.join(HOSTILE, "manifest.json")) as _fh:
    MANIFEST = json.load(_fh)


def run_worker(args, timeout):
    """Runs the worker, restarting it after a crash with the files it had not reached.
    Returns (results by file, problems)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results, problems, summary = {}, [], None
    pending = list(args[1:]) if args[0] == "corpus" else None
    todo = args
    while True:
        try:
            proc = subprocess.run([sys.executable, WORKER, *todo], capture_output=True, text=True,
                                  timeout=timeout, env=env)
            out, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc = "timeout"
        begun = None
        for line in out.splitlines():
            r = json.loads(line)
            if r["event"] == "begin":
                begun = r["file"]
            elif r["event"] == "done":
                results[r["file"]] = r
                begun = None
            else:
                summary = r
        if rc == 0:
            break
        if rc != 3:  # 3: the worker stopped after a file that damaged its process (reported)
            problems.append(f"worker {'hung' if rc == 'timeout' else f'died (status {rc})'} on "
                            f"{begun}: {(proc.stderr if rc != 'timeout' else '')[-300:]}")
        if begun is not None:
            results[begun] = {"file": begun, "outcome": f"crash:{rc}", "intact": False}
        if pending is None:
            break
        rest = [p for p in pending if os.path.basename(p) not in results]
        if not rest or (begun is None and rc != 3):  # nothing left, or it died outside a file
            break
        todo = ["corpus", *rest]
    return results, problems, summary


def test_corpus_is_reproducible(tmp_path):
    subprocess.run([sys.executable, os.path.join(HOSTILE, "make_hostile.py"), str(tmp_path)],
                   check=True, capture_output=True)
    with open(tmp_path / "manifest.json") as fh:
        assert json.load(fh) == MANIFEST
    names = sorted(MANIFEST)
    assert sorted(os.listdir(FILES)) == names
    match, mismatch, errors = filecmp.cmpfiles(FILES, tmp_path, names, shallow=False)
    assert not mismatch and not errors


def test_hostile_corpus_refused_cleanly():
    files = [os.path.join(FILES, n) for n in sorted(MANIFEST)]
    results, problems, _ = run_worker(["corpus", *files], timeout=300)
    bad = []
    for name in sorted(MANIFEST):
        r = results.get(name)
        if r is None:
            bad.append(f"{name}: no result")
        elif r["outcome"] != "CheckpointError" or not r["intact"]:
            bad.append(f"{name} ({MANIFEST[name]}): {r['outcome']}, intact={r['intact']} "
                       f"{r.get('msg', '')[:120]}")
    assert not problems and not bad, "\n".join(problems + bad)


@pytest.mark.parametrize("fmt,seed", [("pt", 101), ("npz", 202), ("safetensors", 303)])
def test_fuzz_loaders(fmt, seed):
    """A few hundred seeded mutants per format (bounded to 60 s each): every failure is a
    CheckpointError; no crash, no hang, no damage to later loads."""
    results, problems, summary = run_worker(["fuzz", fmt, str(seed), "300", "60"], timeout=240)
    escaped = [f"{k}: {r['outcome']} {r.get('msg', '')[:120]} (kept at {r.get('kept')})"
               for k, r in sorted(results.items()) if r["outcome"] != "loaded"
               and r["outcome"] != "CheckpointError"]
    assert not problems, "\n".join(problems)
    assert summary is not None and summary["intact"], summary
    assert summary["mutants"] >= 100, f"only {summary['mutants']} mutants in the time bound"
    head = f"{len(escaped)} of {summary['mutants']} escaped:\n"
    assert not escaped, head + "\n".join(escaped[:20])


def test_load_llamagen_refuses_cleanly():
    """The model loader on top of the readers (config inference, weight checks) adds no other
    failure: the corpus and 100 seeded mutants per format give CheckpointError or a model."""
    import random

    import zipar

    sys.path.insert(0, HOSTILE)
    try:
        import worker
    finally:
        sys.path.remove(HOSTILE)
    try:
        from zipar.io import CheckpointError
    except ImportError:  # pragma: no cover - layout before the io/ split
        from zipar.checkpoint import CheckpointError
    paths = [os.path.join(FILES, n) for n in sorted(MANIFEST) if not n.startswith("poison_")]
    escaped = []

    def attempt(path):
        try:
            zipar.load_llamagen(path, grid=2, n_head=4)
        except CheckpointError:
            pass
        except Exception as e:  # noqa: BLE001 - what we count
            escaped.append(f"{os.path.basename(path)}: {type(e).__name__}: {str(e)[:100]}")

    for p in paths:
        attempt(p)
    for fmt, ext in (("pt", ".pt"), ("npz", ".npz"), ("safetensors", ".safetensors")):
        with open(os.path.join(ROOT, "tests", "fixtures", "c2i_tiny" + ext), "rb") as fh:
            base = fh.read()
        rng = random.Random(11)
        for i in range(100):
            path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"zipar_ll_{os.getpid()}{ext}")
            with open(path, "wb") as fh:
                fh.write(worker.mutant(fmt, base, rng))
            try:
                attempt(path)
            finally:
                os.remove(path)
    assert not escaped, "\n".join(escaped[:20])
