"""Process-wide settings of the engine: threads and build facts (``zipar.show_config()``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ._checks import int_scalar
from ._ext import const, core

__all__ = ["build_info", "show_config", "set_num_threads", "get_num_threads", "read_bandwidth",
           "set_blas_min_rows", "set_kernel_isa", "kernel_isa", "KERNEL_ISAS", "stage_times",
           "StageTimes", "STAGES", "__version__"]

__version__ = "0.1.0"


def build_info() -> dict:
    """Kernel instruction set, BLAS library and thread counts, as a dict."""
    return dict(core().build_info())


def show_config() -> None:
    """Print which BLAS and OpenMP are in use and the thread counts."""
    info = build_info()
    print(f"zipar {__version__}")
    rows = info["blas_min_rows"]
    when = ("every matrix product; OpenBLAS sgemm off" if rows >= 1 << 30 else
            f"products below {rows} rows; sgemm from {rows}")
    print(f"  matrix kernel : {info['kernel_isa']} ({when}); this CPU runs "
          f"{', '.join(info['kernel_isas'])}" + (" ('amx' opt-in: set_kernel_isa)"
                                                  if "amx" in info["kernel_isas"] else ""))
    print(f"  BLAS          : {info['blas']}, {info['blas_threads']} thread(s)")
    print(f"  OpenMP        : libgomp (_OPENMP={info['openmp']}), "
          f"{get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


#: the most threads set_num_threads accepts (ZP_MAX_THREADS of csrc/matmul.h)
MAX_THREADS = 1024


def set_num_threads(n: int) -> None:
    """Set the thread count of both OpenMP (the core's kernels) and OpenBLAS: an int in
    [1, MAX_THREADS = 1024]. Safe while another thread generates: every pass reads the count
    once when it starts, so a change takes effect from the next pass."""
    core().set_num_threads(int_scalar("set_num_threads: the thread count", n, 1, MAX_THREADS))


def get_num_threads() -> int:
    return core().get_num_threads()


def read_bandwidth(nbytes: int, reps: int = 5) -> float:
    """Best-of-``reps`` read bandwidth in bytes per second of all engine threads over a buffer of
    ``nbytes`` (>= 4096): the memory-bound ceiling benchmarks compare passes with."""
    return core().read_bandwidth(int(nbytes), int(reps)) * 1e9


def set_blas_min_rows(m: int) -> None:
    """Send matrix products of at least ``m`` rows to OpenBLAS sgemm instead of the skinny kernel
    (whose results do not depend on the thread count; sgemm's may differ in the last bits)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"set_blas_min_rows needs a positive int, got {m!r}")
    core().set_blas_min_rows(m)


#: the instruction sets of the matrix kernels ("amx", opt-in: AVX-512 for float32 / float16
#: weights and AMX tiles for bfloat16 ones)
KERNEL_ISAS = ("amx", "avx512", "avx2", "scalar")


def kernel_isa() -> str:
    """The instruction set the matrix kernels run: one of KERNEL_ISAS."""
    return build_info()["kernel_isa"]


def set_kernel_isa(isa: str | None) -> None:
    """Run the matrix kernels (and attention) on ``isa``, one of KERNEL_ISAS this CPU supports,
    or on the automatic choice again (``None``: "avx512", else "avx2", else "scalar"; never
    "amx"). Process-wide; takes effect from the next product.

    "amx" (opt-in, CPUs with AMX-BF16): bfloat16 weights run on the tile unit, activations
    split exactly into three bf16 parts. Its bits are its own (logits within float32 rounding of
    the other kernels'). A bfloat16 model built while "amx" is set keeps a second copy of its
    matrices in tile order, which the tile unit streams faster. Measured on a Sapphire-Rapids-
    class host with that copy: ZipAR on GPT-L 1.1-1.2x faster than "avx512" at 2 threads, raster
    and one-query passes 1.1-1.5x slower; at 16 threads raster and ZipAR 1.12-1.19x slower
    (BENCHMARKS.md). float32 and float16 weights give the same bits on every set. On any one set,
    results never depend on the thread count or the batch."""
    if isa is not None and isa not in KERNEL_ISAS:
        raise ValueError(f"set_kernel_isa: unknown instruction set {isa!r}; "
                         f"expected one of {KERNEL_ISAS} or None")
    if not core().force_isa(isa):
        raise ValueError(f"set_kernel_isa: this CPU cannot run {isa!r} "
                         f"(it runs {kernel_isa()!r})")


#: the stages of a layer that zipar times, in order, then the output head (csrc/zipar.h,
#: ZP_STAGE_*)
STAGES = ("norm1", "qkv", "attention", "wo", "norm2", "gate_up", "w2", "head")


@dataclass
class StageTimes:
    """Where the forward passes of a ``stage_times()`` block spent their time (filled when the
    block ends). ``work`` and ``wait``: (threads, stages) seconds summed over the passes and
    layers, per thread of the pass's team, of each stage up to its barrier and of the wait in
    that barrier (STAGES names the columns; "head" is the output head, once a pass); ``setup``,
    ``join``, ``combine``: seconds of thread 0 before the team, from its last stage to after the
    team, and in the CFG combine after it; ``enter``: (threads,) seconds
    from the team's start to each thread's first stage. Threads that never ran a pass are left
    out."""

    passes: int = 0
    work: np.ndarray = field(default_factory=lambda: np.zeros((0, len(STAGES))))
    wait: np.ndarray = field(default_factory=lambda: np.zeros((0, len(STAGES))))
    enter: np.ndarray = field(default_factory=lambda: np.zeros(0))
    setup: float = 0.0
    join: float = 0.0
    combine: float = 0.0

    def per_pass(self) -> dict[str, dict[str, float]]:
        """Milliseconds per pass for each stage (summed over the layers): mean and slowest thread's
        work, mean and longest wait."""
        n = max(self.passes, 1)
        out = {}
        for j, name in enumerate(STAGES):
            w = self.work[:, j] if len(self.work) else np.zeros(1)
            t = self.wait[:, j] if len(self.wait) else np.zeros(1)
            out[name] = {"work_mean": 1e3 * float(w.mean()) / n,
                         "work_max": 1e3 * float(w.max()) / n,
                         "wait_mean": 1e3 * float(t.mean()) / n,
                         "wait_max": 1e3 * float(t.max()) / n}
        return out

    def __str__(self) -> str:
        n = max(self.passes, 1)
        head = "".join(f"{h:>10}" for h in ("work mean", "work max", "wait mean", "wait max"))
        lines = [f"{self.passes} passes, {len(self.work)} thread(s); ms per pass",
                 f"  {'stage':<10}{head}"]
        for name, r in self.per_pass().items():
            lines.append(f"  {name:<10}" + "".join(f"{r[k]:10.3f}" for k in r))
        lines.append(f"  setup {1e3 * self.setup / n:.3f}, join {1e3 * self.join / n:.3f}, "
                     f"combine {1e3 * self.combine / n:.3f}")
        return "\n".join(lines)


@contextlib.contextmanager
def stage_times() -> Iterator[StageTimes]:
    """Time the stages of every forward pass run inside the block::

        with zipar.runtime.stage_times() as t:
            model.generate([207], policy=ZipAR(4))
        print(t)            # ms per pass of each layer stage: work and barrier waits

    Process-wide: passes that other threads run meanwhile are counted too. Timing costs a
    clock read per stage and thread (microseconds a pass); outside the block the passes only
    test a flag."""
    result = StageTimes()
    core().timers_set(True)
    try:
        yield result
    finally:
        seconds, passes = core().timers_read()
        core().timers_set(False)
        k = const("STAGES")
        used = seconds.sum(axis=1) > 0
        used[0] = True
        sec = seconds[: int(np.flatnonzero(used).max()) + 1]
        result.passes = int(passes)
        result.work = sec[:, :k].copy()
        result.wait = sec[:, k:2 * k].copy()
        result.enter = sec[:, const("TIMER_ENTER")].copy()
        result.setup = float(sec[0, const("TIMER_SETUP")])
        result.join = float(sec[0, const("TIMER_JOIN")])
        result.combine = float(sec[0, const("TIMER_COMBINE")])
