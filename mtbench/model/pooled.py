"""Serving plumbing around `MTGR.forward_pooled`: one upload of a batch's int32 inputs, and CUDA graphs.

`PooledInputs` is what the cache decides for one batch, on the host (numpy int32): the batch's row
layout (offsets, n_new_static, n_rt, group_ids) and its pool reads and writes (page_table, lengths,
store_k_rows, store_v_rows; see `PoolIO`). `pooled_forward` runs the batch:

- eager: the arrays travel to the device in ONE pinned, non-blocking copy (`PooledInputs.upload`),
  then `MTGR.forward_pooled` launches the layers one op at a time;
- graphed (`LayerGraphs`, CUDA only): the layer stack is captured once per padded shape as one CUDA
  graph per layer, so a batch costs one graph launch per layer instead of ~10 kernel launches and
  their Python overhead (the cached forward is otherwise bound by the host, not the GPU). Shapes are
  padded: requests to `max_requests + 1`, rows up to a multiple of `row_bucket`. The padding rows
  form one extra request of candidates with no history and no prefix, so every padding row attends
  only to itself and no real row ever sees one; the other padding requests have no rows. Host loads
  are still waited for layer by layer: `before_layer(l)` runs before graph l is launched.

Exactness: graphs replay the very kernels the eager path launches, on the same rows; only the GEMMs
see a few more (padding) rows, which changes no real row's result beyond bf16 rounding of the GEMM
algorithm choice. The replay's `--verify` checks the precision rule on graphed batches like any other.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import kernels
from mtbench.device import PINNED_STAGING
from mtbench.model.batch import GROUP_C, RequestBatch
from mtbench.model.mtgr import MTGR, PoolIO, RowLayout, Scores

_FIELDS = ("offsets", "n_new_static", "n_rt", "lengths", "page_table", "group_ids", "store_k_rows", "store_v_rows")


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
        return cls(kv, as32(host_batch.offsets), as32(host_batch.n_new_static), as32(host_batch.n_rt),
                   as32(host_batch.n_cached), page_table, as32(host_batch.group_ids), store_k_rows, store_v_rows)

    @property
    def num_requests(self) -> int:
        return len(self.lengths)

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    def padded(self, requests: int, rows: int) -> "PooledInputs":
        """The same batch padded to `requests` requests and `rows` rows (see the module docstring)."""
        extra_requests, extra_rows = requests - self.num_requests, rows - self.num_rows
        if extra_requests < 1 or extra_rows < 0:
            raise ValueError(f"cannot pad {self.num_requests} requests / {self.num_rows} rows to {requests} / {rows}")
        offsets = np.concatenate([self.offsets, np.full(extra_requests, self.num_rows, np.int32)])
        offsets[-1] = rows
        zeros, minus = np.zeros(extra_requests, np.int32), np.full(extra_rows, -1, np.int32)
        table = np.zeros((requests, self.page_table.shape[1]), np.int32)
        table[: self.num_requests] = self.page_table
        return PooledInputs(
            self.kv, offsets, np.concatenate([self.n_new_static, zeros]), np.concatenate([self.n_rt, zeros]),
            np.concatenate([self.lengths, zeros]), table,
            np.concatenate([self.group_ids, np.full(extra_rows, GROUP_C, np.int32)]),
            np.concatenate([self.store_k_rows, minus]), np.concatenate([self.store_v_rows, minus]))

    def packed(self) -> np.ndarray:
        return np.concatenate([np.ascontiguousarray(getattr(self, name), dtype=np.int32).reshape(-1) for name in _FIELDS])

    def views(self, packed: torch.Tensor, src_rows: torch.Tensor) -> tuple[RowLayout, PoolIO]:
        """Row layout and pool IO as views into `packed` (a device copy of `packed()`)."""
        sizes = [getattr(self, name).size for name in _FIELDS]
        parts = dict(zip(_FIELDS, packed.split(sizes)))
        rows = RowLayout(parts["offsets"], parts["n_new_static"], parts["n_rt"], parts["group_ids"], None)
        pool = PoolIO(self.kv, parts["page_table"].view(self.page_table.shape), parts["lengths"],
                      parts["store_k_rows"], parts["store_v_rows"], src_rows[: self.num_rows])
        return rows, pool

    def upload(self, arange: "DeviceArange") -> tuple[RowLayout, PoolIO]:
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


@dataclass
class _Bucket:
    """Static buffers and graphs of one padded shape; graphs[l] reads x_in (l = 0) or the previous
    graph's output and writes the next; `hidden` is the last layer's output."""

    packed: torch.Tensor
    x_in: torch.Tensor
    rows: RowLayout
    pool: PoolIO
    graphs: list[torch.cuda.CUDAGraph]
    hidden: torch.Tensor


class LayerGraphs:
    """CUDA graphs of an MTGR layer stack, one bucket per padded (rows, table width) shape.

    Invariants: buckets are keyed by (rows, width) with rows a multiple of `row_bucket` and at most
    `max_rows`; every bucket pads requests to `max_requests + 1`; at most `max_buckets` are kept
    (least recently used dropped first). A bucket is captured the first time a batch needs it: one
    eager pass (which computes that batch), then one capture per layer into one shared memory pool
    (graphs replay in capture order, so later layers may reuse earlier layers' temporaries).
    """

    def __init__(self, max_requests: int, row_bucket: int = 2048, max_rows: int = 32768, max_buckets: int = 16) -> None:
        self.max_requests, self.row_bucket, self.max_rows, self.max_buckets = max_requests, row_bucket, max_rows, max_buckets
        self._buckets: OrderedDict[tuple[int, int], _Bucket] = OrderedDict()
        self._arange = DeviceArange()
        self.captures = 0
        self.replays = 0

    def padded_rows(self, rows: int) -> int:
        return max(1, -(-rows // self.row_bucket)) * self.row_bucket

    def accepts(self, inputs: PooledInputs) -> bool:
        return (inputs.kv.is_cuda and inputs.num_requests <= self.max_requests
                and self.padded_rows(inputs.num_rows) <= self.max_rows)

    def run(self, model: MTGR, batch: RequestBatch, inputs: PooledInputs,
            before_layer: Callable[[int], None] | None) -> Scores:
        bucket = self._prepare(model, batch, inputs, self.padded_rows(inputs.num_rows), before_layer)
        for index, graph in enumerate(bucket.graphs):
            if before_layer is not None:
                before_layer(index)
            graph.replay()
        self.replays += 1
        return model.score(bucket.hidden[: inputs.num_rows], batch)

    def capture_buckets(self, model: MTGR, batch: RequestBatch, inputs: PooledInputs, smallest_rows: int) -> None:
        """Capture every bucket from the one holding `smallest_rows` rows up to `max_rows` now, with
        `batch` (which must store nothing) padded to each size: captures then never fall inside a
        timed batch. Buckets that do not fit in `max_buckets` are left to be captured on first use."""
        rows = self.padded_rows(max(smallest_rows, inputs.num_rows))
        while rows <= self.max_rows and len(self._buckets) < self.max_buckets:
            self._prepare(model, batch, inputs, rows, None)
            rows += self.row_bucket

    def _prepare(self, model: MTGR, batch: RequestBatch, inputs: PooledInputs, rows: int,
                 before_layer: Callable[[int], None] | None) -> _Bucket:
        """The bucket of `rows` padded rows with this batch's inputs and embeddings in its static
        buffers (captured first when new: its eager pass computes the batch)."""
        padded = inputs.padded(self.max_requests + 1, rows)
        key = (padded.num_rows, padded.page_table.shape[1])
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.pool.kv.data_ptr() != inputs.kv.data_ptr():
            bucket = None  # another pool (a new replay run): recapture
        if bucket is None:
            bucket = self._new_bucket(key, padded)
        else:
            self._buckets.move_to_end(key)
        PINNED_STAGING.upload(torch.from_numpy(padded.packed()), bucket.packed.device, out=bucket.packed)
        model.embed(batch, out=bucket.x_in[: inputs.num_rows])
        if not bucket.graphs:
            self._capture(model, bucket, before_layer)
        return bucket

    def _new_bucket(self, key: tuple[int, int], padded: PooledInputs) -> _Bucket:
        while len(self._buckets) >= self.max_buckets:
            self._buckets.popitem(last=False)
        device, kv = padded.kv.device, padded.kv
        packed = torch.zeros(padded.packed().size, dtype=torch.int32, device=device)
        rows, pool = padded.views(packed, self._arange.get(padded.num_rows, device))
        d_model = kv.shape[-1] * kv.shape[-2]
        x_in = torch.zeros((padded.num_rows, d_model), dtype=kv.dtype, device=device)
        bucket = _Bucket(packed, x_in, rows, pool, [], x_in)
        self._buckets[key] = bucket
        return bucket

    def _capture(self, model: MTGR, bucket: _Bucket, before_layer: Callable[[int], None] | None) -> None:
        """Eager pass first (compiles and autotunes outside the capture), then one graph per layer."""
        x = bucket.x_in
        for index in range(len(model.layers)):
            if before_layer is not None:
                before_layer(index)
            x = model.pooled_layer(index, x, bucket.rows, bucket.pool)
        memory = torch.cuda.graph_pool_handle()
        x = bucket.x_in
        for index in range(len(model.layers)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=memory):
                x = model.pooled_layer(index, x, bucket.rows, bucket.pool)
            bucket.graphs.append(graph)
        bucket.hidden = x
        self.captures += 1


def pooled_forward(model: MTGR, batch: RequestBatch, inputs: PooledInputs, arange: DeviceArange,
                   before_layer: Callable[[int], None] | None = None, graphs: LayerGraphs | None = None) -> Scores:
    """`batch` (already on the device) through the pool: graphed when `graphs` takes it, else eager."""
    if graphs is not None and graphs.accepts(inputs):
        model.require_poolable(batch)
        return graphs.run(model, batch, inputs, before_layer)
    rows, pool = inputs.upload(arange)
    return model.forward_pooled(batch, rows, pool, before_layer)


def graphs_supported(model: MTGR) -> bool:
    """Graphs need kernels that never sync with the host: the Triton path on CUDA."""
    return model.device.type == "cuda" and kernels.uses_triton(model.head.weight, model.cfg.kernel_impl)
