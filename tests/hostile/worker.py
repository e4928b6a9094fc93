"""Loads hostile or fuzzed files in a process of its own and reports, one JSON line per file, how
each load ended; run by tests/test_hostile.py (a crash or hang here fails that test, naming the
file, instead of killing the test run).

    python3 tests/hostile/worker.py corpus FILE...
    python3 tests/hostile/worker.py fuzz FORMAT SEED COUNT SECONDS

Outcomes: "CheckpointError" (the only acceptable failure), "loaded" (the loader returned arrays),
or "other:<ExceptionType>". After every file the legitimate fixtures are loaded again and must
give the same bytes, and the unpickler's allow-list must be unchanged ("intact": false otherwise).
fuzz mutates tests/fixtures/c2i_tiny.<format> (byte flips, truncations, insertions, and the same
inside the pickle / npy header / JSON header it carries), writes each mutant to a temporary
file and loads it; the mutation stream is a function of SEED alone.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(ROOT, "tests", "fixtures")

import numpy as np  # noqa: E402

try:  # the package layout after the io/ split, else the single checkpoint module
    from zipar.io import CheckpointError, load_state_dict
    import zipar.io.torch_pickle as _pickle_mod
except ImportError:  # pragma: no cover - older layout
    from zipar.checkpoint import CheckpointError, load_state_dict
    import zipar.checkpoint as _pickle_mod

_MMAP = "mmap" in inspect.signature(load_state_dict).parameters
LEGIT = [os.path.join(FIX, n) for n in ("c2i_tiny.pt", "c2i_tiny.npz", "c2i_tiny.safetensors",
                                        "misc_dtypes.pt", "c2i_bf16_fsdp.pt")]
MARKER = os.path.join(tempfile.gettempdir(), "zipar_pwned")


def digest(d) -> str:
    h = hashlib.sha256()
    for k in sorted(d):
        a = np.ascontiguousarray(d[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def allow_list_snapshot():
    try:
        return _allow_list_snapshot()
    except Exception as e:  # noqa: BLE001 - a poisoned object may not even repr
        return f"unreadable: {type(e).__name__}"


def _allow_list_snapshot():
    table = getattr(_pickle_mod, "_ALLOWED_GLOBALS", None)
    if table is None:
        return None
    out = {}
    for key, v in table.items():
        slots = getattr(type(v), "__slots__", ())
        out[repr(key)] = repr((repr(v), getattr(v, "__defaults__", None),
                               getattr(v, "__kwdefaults__", None),
                               sorted(getattr(v, "__dict__", {}).items()) if not isinstance(v, type)
                               else None,
                               [repr(getattr(v, s, None)) for s in slots]))
    return out


def load(path, mmap=False):
    kw = {"mmap": mmap} if _MMAP else {}
    d = load_state_dict(path, **kw)
    # touch every byte: a view past its storage would be read here (or crash here)
    for a in d.values():
        np.ascontiguousarray(a).tobytes()
    return d


class Integrity:
    def __init__(self):
        self.want = {p: digest(load(p)) for p in LEGIT if os.path.exists(p)}
        self.allow = allow_list_snapshot()

    def check(self) -> bool:
        try:
            ok = all(digest(load(p)) == h for p, h in self.want.items())
        except Exception:
            ok = False
        return ok and allow_list_snapshot() == self.allow and not os.path.exists(MARKER)


def attempt(path, mmap=False):
    try:
        load(path, mmap)
        return "loaded", ""
    except CheckpointError as e:
        return "CheckpointError", str(e)[:300]
    except RecursionError as e:  # a subclass of RuntimeError: reported as what it is
        return "other:RecursionError", str(e)[:300]
    except BaseException as e:  # noqa: BLE001 - every escape is what we count
        return f"other:{type(e).__name__}", str(e)[:300]


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def corpus(files):
    integ = Integrity()
    for path in files:
        name = os.path.basename(path)
        emit(event="begin", file=name)
        outcome, msg = attempt(path)
        intact = integ.check()
        emit(event="done", file=name, outcome=outcome, msg=msg, intact=intact)
        if not intact:  # this process is damaged: the parent goes on in a fresh one
            sys.exit(3)


# ============================================================================ mutations

def _mutate_bytes(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    op = rng.randrange(6)
    if op == 0 and b:  # flip 1-8 random bytes
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 1 and b:  # truncate
        del b[rng.randrange(len(b)):]
    elif op == 2:  # insert random bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == 3 and b:  # duplicate a chunk
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 64))
        b[i:i] = b[i:j]
    elif op == 4 and b:  # interesting integers over 4 or 8 bytes
        i = rng.randrange(len(b))
        val = rng.choice([0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 64 - 1])
        width = rng.choice([4, 8])
        b[i:i + width] = (val % 2 ** (8 * width)).to_bytes(width, "little")
    elif b:  # delete a chunk
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 64)]
    return bytes(b)


def _rezip(src: bytes, member_pred, mutate) -> bytes:
    zin = zipfile.ZipFile(io.BytesIO(src))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if member_pred(info.filename, data):
                data = mutate(data)
            zout.writestr(info.filename, data)
    return out.getvalue()


def _mutate_text_tokens(rng, text: bytes) -> bytes:
    # swap a number for an extreme one, or a quoted token for another
    nums = [i for i, c in enumerate(text) if 48 <= c <= 57]
    if nums and rng.random() < 0.7:
        i = rng.choice(nums)
        j = i
        while j < len(text) and 48 <= text[j] <= 57:
            j += 1
        repl = str(rng.choice([0, -1, 2 ** 31, 2 ** 40, 2 ** 63, 2 ** 64, 10 ** 30, 3])).encode()
        return text[:i] + repl + text[j:]
    return _mutate_bytes(rng, text)


def mutant(fmt: str, base: bytes, rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.35:
        return _mutate_bytes(rng, base)
    if fmt == "pt":
        return _rezip(base, lambda n, d: n.endswith("data.pkl"), lambda d: _mutate_bytes(rng, d))
    if fmt == "npz":
        def npy(d):
            n = 10 + struct.unpack("<H", d[8:10])[0] if d[:6] == b"\x93NUMPY" else 64
            return _mutate_text_tokens(rng, d[:n]) + d[n:]
        names = zipfile.ZipFile(io.BytesIO(base)).namelist()
        pick = rng.choice(names)
        return _rezip(base, lambda n, d: n == pick, npy)
    # safetensors: mutate the JSON header, fixing or not its length prefix
    n = struct.unpack("<Q", base[:8])[0]
    header = _mutate_text_tokens(rng, base[8:8 + n])
    prefix = struct.pack("<Q", len(header)) if rng.random() < 0.8 else base[:8]
    return prefix + header + base[8 + n:]


def fuzz(fmt: str, seed: int, count: int, seconds: float):
    ext = {"pt": ".pt", "npz": ".npz", "safetensors": ".safetensors"}[fmt]
    with open(os.path.join(FIX, "c2i_tiny" + ext), "rb") as fh:
        base = fh.read()
    rng = random.Random(seed)
    integ = Integrity()
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="zipar_fuzz_")
    path = os.path.join(tmp, "mutant" + ext)
    counts = {}
    done = 0
    for i in range(count):
        if time.monotonic() - t0 > seconds:
            break
        data = mutant(fmt, base, rng)
        with open(path, "wb") as fh:
            fh.write(data)
        mmap = _MMAP and fmt != "npz" and rng.random() < 0.3
        emit(event="begin", file=f"{fmt}#{i}", mmap=mmap)
        outcome, msg = attempt(path, mmap)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome.startswith("other"):
            keep = os.path.join(tmp, f"bad_{i}{ext}")
            os.replace(path, keep)
            emit(event="done", file=f"{fmt}#{i}", outcome=outcome, msg=msg, kept=keep,
                 intact=True)
        else:
            emit(event="done", file=f"{fmt}#{i}", outcome=outcome, intact=None)
        done += 1
    emit(event="summary", format=fmt, seed=seed, mutants=done, counts=counts,
         intact=integ.check(), seconds=round(time.monotonic() - t0, 2))
    if os.environ.get("ZIPAR_FUZZ_KEEP") != "1":  # set it to keep the escaped mutants
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if not os.environ.get("ZIPAR_ASAN"):  # (ASan needs a huge address space of its own)
        import resource

        # a loader that allocates what a file declares instead of checking it first fails here
        # with MemoryError (counted as an escape) instead of taking the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))
    if sys.argv[1] == "corpus":
        corpus(sys.argv[2:])
    else:
        fuzz(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
