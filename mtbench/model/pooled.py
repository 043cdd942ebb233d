"""Serving plumbing around `MTGR.forward_pooled`: one upload of a batch's int32 inputs, and CUDA graphs.

`PooledInputs` is what the cache decides for one batch, on the host (numpy int32): the batch's row
layout (offsets, n_new_static, n_rt, group_ids), each row's feature ids, and its pool reads and writes
(page_table, lengths, store_k_rows, store_v_rows; see `PoolIO`). `pooled_forward` runs the batch:

- eager: the arrays travel to the device in ONE pinned, non-blocking copy (`PooledInputs.upload`),
  then `MTGR.forward_pooled` launches the ops one at a time;
- graphed (`ForwardGraphs`, CUDA only): the whole forward is captured once per padded shape, as one
  CUDA graph for the embeddings (`MTGR.embed_rows`), one per layer and one for the heads' logits, so a
  batch costs one upload and len(layers) + 2 graph launches instead of ~200 kernel launches, their
  Python overhead and their allocations (the cached forward is otherwise bound by the host, not the
  GPU). Shapes are padded: requests to `max_requests + 1`, rows up to a multiple of `row_bucket`. The
  padding rows form one extra request of candidates with no history and no prefix, so every padding
  row attends only to itself and no real row ever sees one; the other padding requests have no rows.
  Host loads are still waited for layer by layer: `before_layer(l)` runs before layer l's graph.

Exactness: graphs replay the kernels the eager path launches on the same rows, except that the token
MLPs and heads run on every (padded) row and each row keeps its own group's result; GEMMs over more
rows change no real row's result beyond the rounding of the GEMM algorithm choice (bf16). Tests check
the padded stages against the eager forward on the CPU; the replay's `--verify` checks the precision
rule on graphed batches like any other.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import kernels
from mtbench.device import PINNED_STAGING, pack_aligned, split_aligned
from mtbench.graphs import GraphLimits
from mtbench.model.batch import GROUP_C, RequestBatch
from mtbench.model.device_batch import batch_to_device
from mtbench.model.features import FEATURE_COLUMNS
from mtbench.model.mtgr import MTGR, PoolIO, RowLayout, Scores

_FIELDS = ("offsets", "n_new_static", "n_rt", "lengths", "page_table", "group_ids", "store_k_rows", "store_v_rows",
           "row_ids")


@dataclass(frozen=True)
class PooledInputs:
    """One batch's int32 inputs on the host: B requests, T computed rows, page tables W pages wide."""

    kv: torch.Tensor
    offsets: np.ndarray  # [B + 1]
    n_new_static: np.ndarray  # [B]
    n_rt: np.ndarray  # [B]
    lengths: np.ndarray  # [B] cached static tokens read from the pool
    page_table: np.ndarray  # [B, W]
    group_ids: np.ndarray  # [T]
    store_k_rows: np.ndarray  # [T], -1 = not stored
    store_v_rows: np.ndarray  # [T]
    row_ids: np.ndarray  # [T, 4] feature ids of each row (`MTGR.embed_rows`)

    @classmethod
    def from_batch(cls, kv: torch.Tensor, host_batch: RequestBatch, page_table: np.ndarray,
                   store_k_rows: np.ndarray | None = None) -> "PooledInputs":
        """Inputs of `host_batch` (on the host): request b reads its n_cached prefix tokens from pages
        page_table[b]; computed row t stores its K at row store_k_rows[t] of each pool layer (-1 or None:
        nothing stored) and its V one page-half (P rows) further."""
        as32 = (lambda t: t.numpy().astype(np.int32))
        if store_k_rows is None:
            store_k_rows = np.full(host_batch.num_rows, -1, dtype=np.int32)
        store_v_rows = np.where(store_k_rows >= 0, store_k_rows + kv.shape[3], -1).astype(np.int32)
        row_ids = np.zeros((host_batch.num_rows, FEATURE_COLUMNS), dtype=np.int32)
        for group in (host_batch.user, host_batch.static_seq, host_batch.realtime, host_batch.cand):
            row_ids[group.rows.numpy(), : group.ids.shape[1]] = group.ids.numpy()
        return cls(kv, as32(host_batch.offsets), as32(host_batch.n_new_static), as32(host_batch.n_rt),
                   as32(host_batch.n_cached), page_table, as32(host_batch.group_ids), store_k_rows, store_v_rows,
                   row_ids)

    @property
    def num_requests(self) -> int:
        return len(self.lengths)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def padded(self, requests: int, rows: int, width: int = 0) -> "PooledInputs":
        """The same batch padded to `requests` requests, `rows` rows and a page table at least `width`
        pages wide (see the module docstring)."""
        extra_requests, extra_rows = requests - self.num_requests, rows - self.num_rows
        if extra_requests < 1 or extra_rows < 0:
            raise ValueError(f"cannot pad {self.num_requests} requests / {self.num_rows} rows to {requests} / {rows}")
        offsets = np.concatenate([self.offsets, np.full(extra_requests, self.num_rows, np.int32)])
        offsets[-1] = rows
        zeros, minus = np.zeros(extra_requests, np.int32), np.full(extra_rows, -1, np.int32)
        table = np.zeros((requests, max(width, self.page_table.shape[1])), np.int32)
        table[: self.num_requests] = self.page_table
        return PooledInputs(
            self.kv, offsets, np.concatenate([self.n_new_static, zeros]), np.concatenate([self.n_rt, zeros]),
            np.concatenate([self.lengths, zeros]), table,
            np.concatenate([self.group_ids, np.full(extra_rows, GROUP_C, np.int32)]),
            np.concatenate([self.store_k_rows, minus]), np.concatenate([self.store_v_rows, minus]),
            np.concatenate([self.row_ids, np.zeros((extra_rows, FEATURE_COLUMNS), np.int32)]))

    def packed(self) -> np.ndarray:
        """Every field as int32, end to end, each starting 16-byte aligned (`mtbench.device.pack_aligned`)."""
        return pack_aligned([torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.int32))
                             for name in _FIELDS]).numpy()

    def views(self, packed: torch.Tensor, src_rows: torch.Tensor) -> tuple[RowLayout, PoolIO, torch.Tensor]:
        """Row layout, pool IO and row feature ids as views into `packed` (a device copy of `packed()`)."""
        sizes = [getattr(self, name).size for name in _FIELDS]
        parts = dict(zip(_FIELDS, split_aligned(packed, sizes)))
        rows = RowLayout(parts["offsets"], parts["n_new_static"], parts["n_rt"], parts["group_ids"], None)
        pool = PoolIO(self.kv, parts["page_table"].view(self.page_table.shape), parts["lengths"],
                      parts["store_k_rows"], parts["store_v_rows"], src_rows[: self.num_rows])
        return rows, pool, parts["row_ids"].view(self.row_ids.shape)

    def upload(self, arange: "DeviceArange") -> tuple[RowLayout, PoolIO, torch.Tensor]:
        """Everything on kv's device in one copy (pinned and non-blocking on CUDA)."""
        host = torch.from_numpy(self.packed())
        device = self.kv.device
        packed = PINNED_STAGING.upload(host, device)
        return self.views(packed, arange.get(self.num_rows, device))


class DeviceArange:
    """A cached int32 arange on the device (the source rows of the K/V stores), grown on demand."""

    def __init__(self) -> None:
        self._values: torch.Tensor | None = None

    def get(self, n: int, device: torch.device) -> torch.Tensor:
        if self._values is None or self._values.numel() < n or self._values.device != device:
            self._values = torch.arange(max(n, 1024) * 2, dtype=torch.int32, device=device)
        return self._values[:n]


def forward_stage(model: MTGR, stage: int, x: torch.Tensor | None, rows: RowLayout, pool: PoolIO,
                  row_ids: torch.Tensor) -> torch.Tensor:
    """Stage `stage` of the graphed forward (`ForwardGraphs`), which has len(model.layers) + 2 stages:
    0 embeds every row (`MTGR.embed_rows`), 1..L run layer stage-1 on x, L+1 gives every row's head
    logits. Shapes depend only on the padded inputs, never on the batch's mix of groups."""
    if stage == 0:
        return model.embed_rows(rows.group_ids, row_ids)
    if stage <= len(model.layers):
        return model.pooled_layer(stage - 1, x, rows, pool)
    return model.head_logits(x)


@dataclass
class _Bucket:
    """Static buffers and graphs of one padded shape: graphs[s] replays `forward_stage` s, reading the
    previous graph's output; `hidden` is the last layer's output and `logits` the heads' (every row)."""

    packed: torch.Tensor
    rows: RowLayout
    pool: PoolIO
    row_ids: torch.Tensor
    graphs: list[torch.cuda.CUDAGraph]
    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class ForwardGraphs:
    """CUDA graphs of the whole pooled forward, one bucket per padded (rows, table width) shape.

    A batch costs one input upload, len(layers) + 2 graph launches and one gather of the candidates'
    logits: no eager embedding or head ops, so no per-op host overhead (cuBLAS heuristics for a new
    row count each batch, allocations) on the host's critical path.
    Invariants: buckets are keyed by (rows, width) with rows a multiple of `limits.row_bucket` and at most
    `limits.max_rows`; every bucket pads requests to `limits.max_requests + 1`; at most `max_buckets` are kept
    (least recently used dropped first). A bucket is captured the first time a batch needs it: one
    eager pass (which computes that batch), then one capture per stage into one shared memory pool
    (graphs replay in capture order, so later stages may reuse earlier stages' temporaries).
    """

    def __init__(self, max_requests: int, row_bucket: int = GraphLimits.row_bucket, max_rows: int = GraphLimits.max_rows,
                 max_buckets: int = 16, table_width: int = 0) -> None:
        self.limits = GraphLimits(max_requests, row_bucket, max_rows)
        self.max_buckets = max_buckets
        self.table_width = table_width  # page tables padded to this width: one bucket per row count
        self._buckets: OrderedDict[tuple[int, int], _Bucket] = OrderedDict()
        self._arange = DeviceArange()
        self.captures = 0
        self.replays = 0

    def padded_rows(self, rows: int) -> int:
        return self.limits.padded_rows(rows)

    def accepts(self, inputs: PooledInputs) -> bool:
        return inputs.kv.is_cuda and self.takes(inputs.num_requests, inputs.num_rows)

    def takes(self, requests: int, rows: int) -> bool:
        """Whether a batch of this many requests and computed rows fits a bucket."""
        return self.limits.takes(requests, rows)

    @torch.no_grad()
    def run(self, model: MTGR, batch: RequestBatch, inputs: PooledInputs,
            before_layer: Callable[[int], None] | None) -> Scores:
        """`batch` (on the host) through its bucket's graphs; only the candidates' rows and offsets travel
        besides the bucket's inputs. `Scores.hidden` is a view of the bucket's buffer: valid until the
        next batch runs in this bucket."""
        bucket = self._prepare(model, inputs, self.padded_rows(inputs.num_rows), before_layer)
        embed, *layers, head = bucket.graphs
        embed.replay()
        for index, graph in enumerate(layers):
            if before_layer is not None:
                before_layer(index)
            graph.replay()
        head.replay()
        self.replays += 1
        candidates = PINNED_STAGING.upload(pack_aligned([batch.cand.rows, batch.cand_offsets]), bucket.packed.device)
        rows, offsets = split_aligned(candidates, [batch.cand.rows.numel(), batch.cand_offsets.numel()])
        return model.scores(bucket.logits.index_select(0, rows), offsets, bucket.hidden[: inputs.num_rows])

    def capture_buckets(self, model: MTGR, inputs: PooledInputs, smallest_rows: int) -> None:
        """Capture every bucket from the one holding `smallest_rows` rows up to `max_rows` now, with
        `inputs` (which must store nothing) padded to each size: captures then never fall inside a
        timed batch. Buckets that do not fit in `max_buckets` are left to be captured on first use."""
        limits = self.limits
        rows = limits.padded_rows(max(smallest_rows, inputs.num_rows))
        while rows <= limits.max_rows and len(self._buckets) < self.max_buckets:
            self._prepare(model, inputs, rows, None)
            rows += limits.row_bucket

    @torch.no_grad()
    def _prepare(self, model: MTGR, inputs: PooledInputs, rows: int,
                 before_layer: Callable[[int], None] | None) -> _Bucket:
        """The bucket of `rows` padded rows with these inputs in its static buffers (captured first when
        new: its eager pass computes the batch)."""
        padded = inputs.padded(self.limits.max_requests + 1, rows, self.table_width)
        key = (padded.num_rows, padded.page_table.shape[1])
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.pool.kv.data_ptr() != inputs.kv.data_ptr():
            bucket = None  # another pool (a new replay run): recapture
        if bucket is None:
            bucket = self._new_bucket(key, padded)
        else:
            self._buckets.move_to_end(key)
        PINNED_STAGING.upload(torch.from_numpy(padded.packed()), bucket.packed.device, out=bucket.packed)
        if not bucket.graphs:
            self._capture(model, bucket, before_layer)
        return bucket

    def _new_bucket(self, key: tuple[int, int], padded: PooledInputs) -> _Bucket:
        while len(self._buckets) >= self.max_buckets:
            self._buckets.popitem(last=False)
        packed = torch.zeros(padded.packed().size, dtype=torch.int32, device=padded.kv.device)
        bucket = _Bucket(packed, *padded.views(packed, self._arange.get(padded.num_rows, packed.device)), [])
        self._buckets[key] = bucket
        return bucket

    def _capture(self, model: MTGR, bucket: _Bucket, before_layer: Callable[[int], None] | None) -> None:
        """Eager pass first (compiles and autotunes outside the capture), then one graph per stage."""
        stages = len(model.layers) + 2
        x = None
        for stage in range(stages):
            if before_layer is not None and 1 <= stage <= len(model.layers):
                before_layer(stage - 1)
            x = forward_stage(model, stage, x, bucket.rows, bucket.pool, bucket.row_ids)
        memory = torch.cuda.graph_pool_handle()
        x = None
        for stage in range(stages):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=memory):
                x = forward_stage(model, stage, x, bucket.rows, bucket.pool, bucket.row_ids)
            bucket.graphs.append(graph)
            if stage == stages - 2:
                bucket.hidden = x
        bucket.logits = x
        self.captures += 1


def pooled_forward(model: MTGR, batch: RequestBatch, inputs: PooledInputs, arange: DeviceArange,
                   before_layer: Callable[[int], None] | None = None, graphs: ForwardGraphs | None = None) -> Scores:
    """`batch` (built on the host) through the pool: graphed when `graphs` takes it, else eager."""
    if graphs is not None and graphs.accepts(inputs):
        model.require_poolable(batch)
        return graphs.run(model, batch, inputs, before_layer)
    rows, pool, _ = inputs.upload(arange)
    return model.forward_pooled(batch_to_device(batch, inputs.kv.device), rows, pool, before_layer)


def graphs_supported(model: MTGR) -> bool:
    """Graphs need kernels that never sync with the host: the Triton path on CUDA."""
    return model.device.type == "cuda" and kernels.uses_triton(model.head.weight, model.cfg.kernel_impl)
