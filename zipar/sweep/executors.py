"""Where sweep cells run: a spawn-started process pool or Dask (in-process needs no executor)."""

from __future__ import annotations

import os
import pickle
import signal

from ..runtime import set_num_threads
from .cell import _run_cell

__all__ = ["process_worker_init"]


def _progress(progress: bool, total: int, initial: int):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="sweep", unit="cell")


def _exit_with_parent(parent: int):
    """Daemon loop of a pool worker: exit when the sweep's process is gone (killed with
    SIGKILL, say), rather than wait forever on the task queue its siblings keep open."""
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def process_worker_init(threads: int, parent: int):
    """Initializer of a process-pool worker that runs sweep cells: ignores Ctrl-C (the parent
    stops the workers), exits when the parent process ``parent`` is gone, and sets the engine's
    thread count to ``threads``. For ``ProcessPoolExecutor(initializer=..., initargs=(threads,
    os.getpid()))``."""
    # Ctrl-C goes to the parent, which terminates the workers; a worker never sees it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import threading

    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    set_num_threads(threads)


_process_worker_init = process_worker_init  # the old private name (kept for one release)


def _run_process(tasks, finish, workers):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    try:
        pickle.dumps([t["metrics"] for _, t in tasks])
    except Exception as e:
        raise TypeError("executor='process' sends the metric functions to other processes: "
                        f"use module-level functions, not lambdas or closures ({e})") from None
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=process_worker_init, initargs=(1, os.getpid()))
    futures = {pool.submit(_run_cell, task): i for i, task in tasks}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=futures.get):
                finish(futures[fut], fut.result())
    except BaseException:
        for fut in futures:
            fut.cancel()
        # workers run C code and ignore SIGINT: stop them rather than wait for their cells
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_dask(tasks, finish, workers, scheduler):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError('executor="dask" needs dask.distributed: pip install '
                          '"dask[distributed]" (or pip install "zipar[dask]")') from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
        threads = None          # a shared cluster's workers keep their own thread settings
    else:
        cluster = LocalCluster(n_workers=min(workers, len(tasks)), threads_per_worker=1,
                               processes=True, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        threads = 1
    try:
        futures = {}
        for i, task in tasks:
            futures[client.submit(_run_cell, dict(task, threads=threads), pure=False)] = i
        try:
            for fut in as_completed(list(futures)):
                finish(futures[fut], fut.result())
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
