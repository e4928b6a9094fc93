"""Hugging Face checkpoint folders: config.json + one or many safetensors shards (+ index).

Shared by the Emu3 and Chameleon loaders. A folder holds either ``model.safetensors`` or shards
listed by ``model.safetensors.index.json`` (``{"metadata": ..., "weight_map": {name: file}}``).
Every shard's header is read and checked against the index before any tensor is used; tensors
are memory-mapped. A repo id (``"BAAI/Emu3-Gen-hf"``) resolves through huggingface_hub's local
cache (never the network) when huggingface_hub is installed.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ..io.errors import CheckpointError
from ..io.safetensors import read_safetensors

__all__ = ["resolve_folder", "read_config", "read_folder_tensors", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"


def resolve_folder(path, *, cache_dir=None) -> str:
    """A local folder for ``path``: an existing directory, or a repo id ``owner/name`` found in
    huggingface_hub's cache (offline: nothing is downloaded)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return p
    if os.path.exists(p):
        raise CheckpointError(f"{p}: is a file; an Emu3 / Chameleon checkpoint is a Hugging Face "
                              "folder with config.json and safetensors shards (a LlamaGen "
                              "checkpoint file loads with zipar.load_llamagen or zipar.load)")
    parts = p.split("/")
    if len(parts) == 2 and all(parts) and not p.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise CheckpointError(f"{p}: no such folder (repo ids resolve through the "
                                  "huggingface_hub cache; huggingface_hub is not installed)"
                                  ) from None
        try:
            # HF_HUB_CACHE is read here, not only when huggingface_hub was imported
            return snapshot_download(p, cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE"),
                                     local_files_only=True)
        except Exception as e:  # LocalEntryNotFoundError and friends
            raise CheckpointError(f"{p}: not a folder and not in the huggingface_hub cache "
                                  f"({type(e).__name__}: {e})") from None
    raise CheckpointError(f"{p}: no such folder")


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder}: no config.json (not a Hugging Face checkpoint folder)")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return cfg


def _shard_names(folder: str) -> Tuple[Dict[str, str], list]:
    """(weight_map, shard files): from the index when there is one, else model.safetensors."""
    index = os.path.join(folder, INDEX_NAME)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                idx = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{index}: unreadable ({e})") from None
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in wm.items()):
            raise CheckpointError(f"{index}: no weight_map of tensor names to shard files")
        shards = sorted(set(wm.values()))
        for s in shards:
            if os.path.basename(s) != s:
                raise CheckpointError(f"{index}: shard name {s!r} is not a plain file name")
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise CheckpointError(f"{folder}: shard(s) listed in {INDEX_NAME} are missing: "
                                  + ", ".join(missing[:5])
                                  + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        return wm, shards
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return {}, ["model.safetensors"]
    raise CheckpointError(f"{folder}: neither {INDEX_NAME} nor model.safetensors")


def read_folder_tensors(folder: str, *, select: Optional[Callable[[str], bool]] = None
                        ) -> Dict[str, np.ndarray]:
    """Every tensor of the folder (memory-mapped; bfloat16 kept as uint16 bit patterns), after
    checking each shard's header against the index: a tensor the index places in a shard must be
    there, and a shard may hold no tensor the index places elsewhere or omits."""
    wm, shards = _shard_names(folder)
    out: Dict[str, np.ndarray] = {}
    for s in shards:
        path = os.path.join(folder, s)
        tensors, _ = read_safetensors(path, keep_bfloat16=True, mmap=True)
        if wm:
            want = {k for k, v in wm.items() if v == s}
            have = set(tensors)
            if want != have:
                lost, extra = sorted(want - have), sorted(have - want)
                msg = []
                if lost:
                    msg.append(f"lacks {', '.join(lost[:3])}" + (" ..." if len(lost) > 3 else ""))
                if extra:
                    msg.append(f"holds {', '.join(extra[:3])}" + (" ..." if len(extra) > 3 else "")
                               + " that the index does not place there")
                raise CheckpointError(f"{path}: header disagrees with {INDEX_NAME}: "
                                      + "; ".join(msg))
        for k, v in tensors.items():
            if k in out:
                raise CheckpointError(f"{folder}: tensor {k!r} appears in two shards")
            if select is None or select(k):
                out[k] = v
    return out
