# Type stub of the C extension zipar._core (zipar/_core.c). Loaded through zipar._ext.core().
from typing import Callable, Dict, Optional, Tuple, Union, final

import numpy as np
import numpy.typing as npt

ZP_ROLE_PREFIX: int
ZP_ROLE_SAMPLE: int
ZP_ROLE_PROXY: int
ZP_ROLE_REFEED: int
ZP_ROLE_VERIFY: int
ZP_ROLE_DRAFT: int
ZP_ROLE_EOR: int
ZP_WTYPE_F32: int
ZP_WTYPE_BF16: int
ZP_WTYPE_F16: int
ZP_POLICY_RASTER: int
ZP_POLICY_ZIPAR: int
ZP_POLICY_ADAPTIVE: int
ZP_POLICY_EXTERNAL: int
ZP_SCHEDULE_EAGER: int
ZP_SCHEDULE_PAPER: int
ZP_PROXY_ABOVE: int
ZP_PROXY_LEFT: int
ZP_PROXY_CONST: int
ZP_SLOT_UNWRITTEN: int
ZP_SLOT_MASKED: int
ZP_SLOT_COMMITTED: int
ZP_QUERY_FIELDS: int
ZP_CELL_FIELDS: int
ZP_TRACE_FIELDS: int

_F32 = npt.NDArray[np.float32]
_I32 = npt.NDArray[np.int32]

@final
class Model:
    def __init__(self, weights: object, *, dim: int, n_layer: int, n_head: int, n_kv_head: int,
                 head_dim: int, hidden: int, vocab: int, cls_token_num: int, grid_h: int,
                 grid_w: int, eor: int, eor_token: int, norm_eps: float,
                 rope_base: float, rope_1d: int = ..., qk_norm: int = ...,
                 qk_norm_eps: float = ..., swin_norm: int = ..., vis_lo: int = ...,
                 vis_hi: int = ..., wtype: int = ...) -> None: ...

@final
class Cache:
    def __init__(self, model: Model, n_images: int, guided: bool, prefix_cond: Optional[_F32],
                 prefix_uncond: Optional[_F32] = ..., prefix_mask: Optional[np.ndarray] = ...,
                 *, prefix_ids: Optional[_I32] = ..., prefix_len: Optional[_I32] = ...,
                 uncond_ids: Optional[_I32] = ..., uncond_len: Optional[_I32] = ...,
                 kv_type: int = ...) -> None: ...
    @property
    def slots(self) -> _I32: ...
    @property
    def kv_bytes(self) -> int: ...
    @property
    def kv_type(self) -> int: ...
    def forward(self, queries: _I32, cfg_scale: float,
                capture: Optional[Tuple[_I32, _I32, _I32, _F32]] = ...) -> _F32: ...
    def read_kv(self, layer: int) -> Tuple[_F32, _F32]: ...

@final
class Session:
    def __init__(self, model: Model, n_images: int, prefix_cond: Optional[_F32],
                 prefix_uncond: Optional[_F32] = ..., prefix_mask: Optional[np.ndarray] = ...,
                 sample_ids: Optional[npt.NDArray[np.uint32]] = ..., *,
                 prefix_ids: Optional[_I32] = ..., prefix_len: Optional[_I32] = ...,
                 uncond_ids: Optional[_I32] = ..., uncond_len: Optional[_I32] = ...,
                 cfg_scale: float = ...,
                 cfg_interval: int = ..., temperature: float = ..., top_k: int = ...,
                 top_p: float = ..., seed: int = ..., kind: int = ..., window: int = ...,
                 schedule: int = ..., proxy: int = ..., proxy_token: int = ...,
                 min_window: int = ...,
                 max_window: int = ..., threshold: float = ..., trace: bool = ...,
                 kv_type: int = ...) -> None: ...
    @property
    def kv_bytes(self) -> int: ...
    def run(self, max_passes: int = ..., callback: Optional[Callable[[int], object]] = ...
            ) -> int: ...
    def step(self, cells: _I32) -> None: ...
    @property
    def tokens(self) -> _I32: ...
    @property
    def progress(self) -> _I32: ...
    @property
    def row_start(self) -> _I32: ...
    @property
    def done(self) -> bool: ...
    @property
    def pass_queries(self) -> _I32: ...
    @property
    def image_passes(self) -> npt.NDArray[np.int64]: ...
    @property
    def image_queries(self) -> npt.NDArray[np.int64]: ...
    @property
    def trace(self) -> _I32: ...
    @property
    def stats(self) -> Dict[str, Union[int, float]]: ...

def philox4x32_10(counter: Tuple[int, int, int, int], key: Tuple[int, int]
                  ) -> Tuple[int, int, int, int]: ...
def uniform(seed: int, sample_id: int, pos: int, draw: int) -> float: ...
def sampling_probs(logits: _F32, temperature: float = ..., top_k: int = ...,
                   top_p: float = ...) -> npt.NDArray[np.float64]: ...
def sampling_default() -> Dict[str, Union[int, float]]: ...
def draw(probs: npt.NDArray[np.float64], u: float) -> int: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_blas_min_rows(n: int) -> None: ...
def build_info() -> Dict[str, Union[str, int]]: ...
def read_bandwidth(bytes: int, reps: int) -> float: ...
def timers_set(on: bool) -> None: ...
def timers_read() -> tuple[np.ndarray, int]: ...
