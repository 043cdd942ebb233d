"""The MTGR model (HSTU encoder with an exactly cacheable U+S prefix), its configs, batches and FLOP counts.

Public API (others code against it):
- `get_config(name, **overrides) -> MTGRConfig`, `PRESET_NAMES`
- `RequestSpec`, `build_batch(requests, cfg, device) -> RequestBatch`, `sample_requests(cfg, batch_size, ...)`
- `MTGR(cfg)`: `forward`, `encode_prefix`, `forward_cached`, `forward_pooled`; outputs `Scores`, `StaticKV`
- `mtbench.model.pooled`: `PooledInputs`, `pooled_forward`, `ForwardGraphs` (the replay's serving path)
- `page_static_kv(kv, page_tokens) -> PagedKV` (pool-shaped paged copy, `.prefix(layer)`)
- `request_flops`, `miss_and_hit_flops`, `attention_pairs`, `FlopCount`
"""

from mtbench.model.batch import (
    GROUP_C,
    GROUP_NAMES,
    GROUP_R,
    GROUP_S,
    GROUP_U,
    GroupFeatures,
    RequestBatch,
    RequestSpec,
    build_batch,
    sample_requests,
)
from mtbench.model.config import (
    DTYPES,
    HISTORY_MODES,
    NORMALIZERS,
    PRESET_NAMES,
    PRESETS,
    MTGRConfig,
    get_config,
    parse_dtype,
)
from mtbench.model.flops import FlopCount, attention_pairs, miss_and_hit_flops, request_flops
from mtbench.model.mtgr import MTGR, ParameterCount, PrefixForLayer, Scores, StaticKV, count_parameters
from mtbench.model.paged import PagedKV, page_static_kv

__all__ = [
    "DTYPES", "GROUP_C", "GROUP_NAMES", "GROUP_R", "GROUP_S", "GROUP_U", "HISTORY_MODES", "NORMALIZERS", "PRESETS",
    "PRESET_NAMES", "FlopCount", "PagedKV", "GroupFeatures", "MTGR", "MTGRConfig", "ParameterCount", "PrefixForLayer", "RequestBatch",
    "RequestSpec", "Scores", "StaticKV", "attention_pairs", "build_batch", "count_parameters", "get_config", "miss_and_hit_flops",
    "page_static_kv", "parse_dtype", "request_flops", "sample_requests",
]
