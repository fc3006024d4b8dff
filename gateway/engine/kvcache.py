"""A KV cache for continuous batching over a transformers model's own forward.

Every row of the batch is one sequence; all rows share the column axis. Each decode step writes one
new column for every row at `end`; a row's valid columns are marked in `valid`, so rows may start at
different columns (a request that joins late puts its prompt just left of `end`) and may have holes.
The attention mask handed to the model is a view of `valid`, so the model never sees other rows' data.

Buffers are preallocated per layer as [rows, kv_heads, columns, head_dim], so a step writes one column
in place instead of concatenating the whole cache (what DynamicCache does). Columns grow by a quarter
(never past what the active rows can still use: `lookahead`, set by the engine from their budgets);
rows grow in powers of two from one, and shrink to the active rows whenever columns grow. A single
long generation so holds at most ~1.25x its own KV (it held 4 rows x doubled columns: up to 8x).
Active rows are kept compact in [0, rows): a finished row is replaced by the last one (one row copy).
Columns left of every active row's start are reclaimed by shifting the window when the buffer is full.

A long prompt may be prefilled a chunk at a time (gateway/engine/chunked_prefill.py) in one *pending* row,
right after the active ones: its columns are its own (a row's data never mixes with another's), so decode
steps of the active rows go on between its chunks; moves, growth and row removals carry it along, and
rows that join meanwhile (short prompts) go before it (it moves down, with the columns filled so far).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from gateway.gc_heap import release_free_memory

MIN_COLUMNS = 64
MIN_ROWS = 1  # a lone request holds one row, not four: at 4000 tokens of SmolLM2-135M that was +540 MB
GROWTH_DIVISOR = 4  # a full buffer grows by a quarter of its columns: ≤ 25% spare, ~4 copies amortized
# Growing frees each old layer buffer after copying it; glibc keeps freed heap resident until trimmed,
# so large ones are trimmed one by one (1500 tokens, 95.6 MiB of KV: peak +121 MiB, +98.5 trimmed per layer).
TRIM_EACH_BYTES = 1 << 20
KEEP_IDLE_BYTES = 4 << 20  # an emptied cache keeps buffers up to this size for the next request
COLUMN_ALIGN = 16


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _pow2(n: int, floor: int) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


class _ColumnLayer(DynamicLayer):
    """Placeholder layer: the cache handles updates itself; this only answers layer-type questions."""

    is_sliding = False


class BatchKVCache(Cache):
    """Shared-column KV cache; see the module docstring. Used from one thread only."""

    def __init__(self, num_layers: int, device: torch.device) -> None:
        super().__init__(layers=[_ColumnLayer() for _ in range(num_layers)])
        self.device = device
        self.row_capacity = 0
        self.col_capacity = 0
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.rows = 0  # active decode rows are [0, rows)
        self.pending = 0  # 1 while a prompt is prefilled in chunks: row `rows`, not decoded yet
        self.pending_done = 0  # its prompt tokens in the cache (once the targeted chunk is written)
        self.start = 0  # first column any active row uses
        self.end = 0  # the column the next decode step writes
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=device)
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # next position id per row
        self.tokens = torch.zeros(0, dtype=torch.long, device=device)  # next input token per row
        self.row_start: list[int] = []
        self.lookahead = 0  # decode steps the active rows may still take (0 = unknown): caps growth
        # what the next forward writes: rows [r0, r1), columns [w0, w0 + q), returns columns [ws, w0 + q)
        self._target = (0, 0, 0, 0, 0)

    # ---- transformers Cache interface --------------------------------------------------------------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.write(self._target, key_states, value_states, layer_idx)

    @property
    def target(self) -> tuple[int, int, int, int, int]:
        """Where the next forward writes (set by begin_decode, begin_prefill, target_chunk): kept by a forward
        that writes two places at once (a decode step and a prompt chunk, gateway/engine/lean_forward.py)."""
        return self._target

    def write(
        self, target: tuple[int, ...], key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new keys/values at `target`; the keys/values its queries attend to."""
        r0, r1, w0, q, ws = target
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if keys is None or values is None:
            keys, values = self._allocate(layer_idx, key_states, value_states)
        keys[r0:r1, :, w0 : w0 + q] = key_states
        values[r0:r1, :, w0 : w0 + q] = value_states
        return keys[r0:r1, :, ws : w0 + q], values[r0:r1, :, ws : w0 + q]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        _, _, w0, _, ws = self._target
        return w0 - ws

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    # ---- layout --------------------------------------------------------------------------------------
    def _allocate(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor):
        shape_k = (self.row_capacity, key_states.shape[1], self.col_capacity, key_states.shape[3])
        shape_v = (self.row_capacity, value_states.shape[1], self.col_capacity, value_states.shape[3])
        # zeros, not empty: masked columns are multiplied by 0 in attention, and 0 * NaN would leak
        self.keys[layer_idx] = torch.zeros(shape_k, dtype=key_states.dtype, device=self.device)
        self.values[layer_idx] = torch.zeros(shape_v, dtype=value_states.dtype, device=self.device)
        return self.keys[layer_idx], self.values[layer_idx]

    def _resize(self, rows: int, cols: int) -> None:
        """Reallocate to rows x cols (never below the active rows and columns), keeping their data."""
        rows, cols = max(rows, self.rows + self.pending, 1), max(cols, self.end)
        if rows == self.row_capacity and cols == self.col_capacity:
            return
        keep_r, keep_c = self.rows + self.pending, self.end
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                if old is None:
                    continue
                new = torch.zeros((rows, old.shape[1], cols, old.shape[3]), dtype=old.dtype, device=old.device)
                new[:keep_r, :, :keep_c] = old[:keep_r, :, :keep_c]
                store[i] = new
                big = old.nbytes >= TRIM_EACH_BYTES
                del old
                if big:  # its pages go back now: else every old layer stays resident until the last is copied
                    release_free_memory()
        valid = torch.zeros(rows, cols, dtype=torch.bool, device=self.device)
        valid[:keep_r, :keep_c] = self.valid[:keep_r, :keep_c]
        self.valid = valid
        for name in ("positions", "tokens"):
            old = getattr(self, name)
            new = torch.zeros(rows, dtype=torch.long, device=self.device)
            kept = min(rows, old.shape[0])
            new[:kept] = old[:kept]
            setattr(self, name, new)
        del self.row_start[rows:]
        self.row_start.extend([0] * (rows - len(self.row_start)))
        self.row_capacity, self.col_capacity = rows, cols
        if any(buf is not None for buf in self.keys):
            release_free_memory()

    def _move_columns(self, shift: int) -> None:
        """Move the active window [start, end) by `shift` columns (negative = left) for the active rows."""
        if shift == 0:
            return
        src0, src1, rows = self.start, self.end, self.rows + self.pending
        dst0 = src0 + shift
        for store in (self.keys, self.values):
            for buf in store:
                if buf is not None and rows:
                    buf[:rows, :, dst0 : dst0 + (src1 - src0)] = buf[:rows, :, src0:src1].clone()
        window = self.valid[:rows, src0:src1].clone()
        self.valid[:rows] = False
        self.valid[:rows, dst0 : dst0 + (src1 - src0)] = window
        for r in range(rows):
            self.row_start[r] += shift
        self.start, self.end = dst0, src1 + shift

    def _ensure_columns(self, needed_end: int, rows: int | None = None) -> None:
        """Make room up to column `needed_end` (exclusive): reclaim dead columns on the left, then grow.

        Growing copies everything anyway, so row capacity left over from a larger batch goes in the
        same copy: it becomes `rows` (default: the active rows, rounded up to a power of two).
        """
        if needed_end <= self.col_capacity:
            return
        if self.start > 0:
            shift = self.start
            self._move_columns(-shift)
            needed_end -= shift
        if needed_end > self.col_capacity:
            rows = rows if rows is not None else _pow2(self.rows + self.pending, MIN_ROWS)
            self._resize(rows, self._columns_for(needed_end, self.end))

    def _columns_for(self, needed_end: int, end: int) -> int:
        """Capacity to grow to: a quarter more, but not past `end + lookahead`, the last column any active
        row can still write (a 64-token answer after a 44-token prompt needs 112 columns, not 128)."""
        grown = self.col_capacity + max(self.col_capacity // GROWTH_DIVISOR, MIN_COLUMNS)
        size = _round_up(max(needed_end, grown), COLUMN_ALIGN)
        if self.lookahead:
            size = min(size, max(needed_end, _round_up(end + self.lookahead, COLUMN_ALIGN)))
        return size

    def reset(self) -> None:
        """Forget every row; buffers go back to the allocator unless small (kept for the next request).

        An idle server should not hold the KV memory of its last burst (47 MB for 8 x 128 tokens of
        SmolLM2-135M in fp32); allocating it again costs far less than a prefill.
        """
        self.rows = self.start = self.end = self.pending = 0
        if self.nbytes() > KEEP_IDLE_BYTES:
            self.keys = [None] * len(self.keys)
            self.values = [None] * len(self.values)
            self.row_capacity = self.col_capacity = 0
            self.valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)
            self.positions = torch.zeros(0, dtype=torch.long, device=self.device)
            self.tokens = torch.zeros(0, dtype=torch.long, device=self.device)
            self.row_start = []
        else:
            self.valid.zero_()

    # ---- prefill: new rows join ------------------------------------------------------------------------
    # New rows go after the active ones. Their prompts end at `end`; a prefix that all of them share
    # (`shared` tokens, e.g. a chat template's system prompt) sits in the same columns for every new
    # row, so it is computed once (one row) and copied: [end - q, end - q + shared). Each row's own
    # suffix is right-aligned to `end`; shorter rows leave masked holes between prefix and suffix.
    def _layout(self, n: int, q: int) -> None:
        if self.rows + self.pending == 0:
            self.start = self.end = 0
            self.valid.zero_()
        rows = max(self.row_capacity, _pow2(self.rows + n + self.pending, MIN_ROWS))
        self._ensure_columns(self.end + 1, rows)
        if self.end < q:  # the prompts need q columns left of `end`: move the window right
            if self.col_capacity < q + 1:
                self._resize(rows, self._columns_for(q + 1, q))
            self._move_columns(q - self.end)
        self._resize(rows, self.col_capacity)
        if self.pending:  # a prompt being prefilled in chunks stays right after the rows: they join before it
            self._move_pending(self.rows + n)

    def _move_pending(self, dst: int) -> None:
        """Move the pending row (index `rows`) to row `dst`: only the columns its chunks have filled so far."""
        src = self.rows
        c0 = self.row_start[src]
        c1 = c0 + self.pending_done
        for store in (self.keys, self.values):
            for buf in store:
                if buf is not None:
                    buf[dst, :, c0:c1] = buf[src, :, c0:c1]
        self.valid[dst] = self.valid[src]
        self.valid[src] = False
        self.row_start[dst] = self.row_start[src]

    def begin_shared_prefix(self, lengths: list[int], shared: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lay out the new rows and target the shared prefix of the first one: (position_ids, mask)."""
        self._layout(len(lengths), max(lengths))
        r0, w0 = self.rows, self.end - max(lengths)
        self._target = (r0, r0 + 1, w0, shared, w0)
        ar = torch.arange(shared, device=self.device)
        return ar[None, :], (ar[None, :] <= ar[:, None])[None, None]

    def copy_shared_prefix(self, n: int, lengths: list[int], shared: int) -> None:
        r0, c0 = self.rows, self.end - max(lengths)
        for store in (self.keys, self.values):
            for buf in store:
                if buf is not None:
                    buf[r0 + 1 : r0 + n, :, c0 : c0 + shared] = buf[r0 : r0 + 1, :, c0 : c0 + shared]

    def begin_prefill(self, lengths: list[int], shared: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Target the new rows' prompts after `shared` prefix tokens (already in place when shared > 0).

        Returns (position_ids [n, qs], mask [n, 1, qs, shared + qs] bool) for left-padded suffixes of
        width qs = max(lengths) - shared.
        """
        n, q = len(lengths), max(lengths)
        if not shared:
            self._layout(n, q)
        qs = q - shared
        r0, w0 = self.rows, self.end - qs
        self._target = (r0, r0 + n, w0, qs, self.end - q)
        own = torch.tensor([length - shared for length in lengths], device=self.device)
        ar = torch.arange(qs, device=self.device)
        real = ar[None, :] >= (qs - own)[:, None]  # [n, qs]: column holds a prompt token
        mask = (ar[None, :] <= ar[:, None])[None] & real[:, None, :]
        mask |= torch.eye(qs, dtype=torch.bool, device=self.device)[None] & ~real[:, :, None]  # pads see themselves
        prefix = (real[:, :, None] & torch.ones(1, 1, shared, dtype=torch.bool, device=self.device)).expand(
            n, qs, shared
        )
        positions = (ar[None, :] - (qs - own)[:, None] + shared).clamp_(min=0)
        return positions, torch.cat([prefix, mask], dim=2)[:, None]

    def end_prefill(self, lengths: list[int], shared: int = 0) -> None:
        """The new rows become active: mark their columns valid and set their next positions."""
        r0, q = self.rows, max(lengths)
        for i, length in enumerate(lengths):
            row = r0 + i
            self.valid[row] = False
            self.valid[row, self.end - q : self.end - q + shared] = True
            self.valid[row, self.end - (length - shared) : self.end] = True
            self.positions[row] = length
            if len(self.row_start) <= row:
                self.row_start.extend([0] * (row + 1 - len(self.row_start)))
            self.row_start[row] = self.end - (q if shared else length)
        self.rows += len(lengths)
        self.start = min(self.row_start[: self.rows + self.pending])

    # ---- chunked prefill: one pending row, filled a chunk per step ------------------------------------
    def begin_pending(self, length: int) -> None:
        """Lay out one new row (index `rows`) for a prompt of `length` tokens, prefilled by `target_chunk`.

        All its columns are allocated at once (no growth while it fills); they end at the current `end`.
        Decode steps of the active rows may run between chunks: the row joins with a hole where they wrote.
        """
        self._layout(1, length)
        row = self.rows
        self.valid[row] = False
        self.row_start[row] = self.end - length
        self.pending = 1
        self.pending_done = 0
        self.start = min(self.row_start[: self.rows + 1])

    def target_chunk(self, done: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Target the pending row's prompt positions [done, done + size): (position_ids, mask [1,1,size,done+size])."""
        row, origin = self.rows, self.row_start[self.rows]
        self._target = (row, row + 1, origin + done, size, origin)
        self.pending_done = done + size
        queries = torch.arange(done, done + size, device=self.device)
        keys = torch.arange(done + size, device=self.device)
        return queries[None, :], (keys[None, :] <= queries[:, None])[None, None]

    def end_pending(self, length: int) -> None:
        """The pending row's prompt is complete: it becomes the last active row."""
        row = self.rows
        origin = self.row_start[row]
        self.valid[row, origin : origin + length] = True
        self.positions[row] = length
        self.pending = 0
        self.rows += 1
        self.start = min(self.row_start[: self.rows])

    def drop_pending(self) -> None:
        """Forget the pending row (its request was cancelled or failed)."""
        if not self.pending:
            return
        self.valid[self.rows] = False
        self.pending = 0
        if self.rows == 0:
            self.reset()
        else:
            self.start = min(self.row_start[: self.rows])

    # ---- decode: one column for every active row ---------------------------------------------------------
    def begin_decode(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids [rows, 1], position_ids [rows, 1], mask [rows, 1, 1, window]) for one decode step."""
        self._ensure_columns(self.end + 1)
        rows, end = self.rows, self.end
        # the active rows' own window: a pending prompt's columns further left are masked for all of them,
        # and attending over them made a decode step twice as slow (8k-token prompt: 55 -> 115 ms)
        first = min(self.row_start[:rows]) if self.pending else self.start
        self.valid[:rows, end] = True
        self._target = (0, rows, end, 1, first)
        mask = self.valid[:rows, None, None, first : end + 1]
        return self.tokens[:rows, None], self.positions[:rows, None], mask

    def end_decode(self) -> None:
        self.positions[: self.rows] += 1
        self.end += 1

    def remove_row(self, row: int) -> None:
        """Drop an active row; the last active row moves into its place (callers mirror the move)."""
        last = self.rows - 1
        if row != last:
            self._copy_row(last, row)
        self.valid[last] = False
        if self.pending:  # the pending row moves down into the freed slot, staying right after the active ones
            self._copy_row(last + 1, last)
            self.valid[last + 1] = False
        self.rows = last
        if self.rows + self.pending == 0:
            self.reset()
        else:
            self.start = min(self.row_start[: self.rows + self.pending])

    def _copy_row(self, src: int, dst: int) -> None:
        c0, c1 = self.start, self.end
        for store in (self.keys, self.values):
            for buf in store:
                if buf is not None:
                    buf[dst, :, c0:c1] = buf[src, :, c0:c1]
        self.valid[dst] = self.valid[src]
        self.positions[dst] = self.positions[src]
        self.tokens[dst] = self.tokens[src]
        self.row_start[dst] = self.row_start[src]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for store in (self.keys, self.values) for t in store if t is not None)


def attention_mask_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the additive float mask eager attention needs; None for sdpa (boolean masks)."""
    if getattr(model.config, "_attn_implementation", "sdpa") == "sdpa":
        return None
    dtype = next(model.parameters()).dtype
    return dtype if dtype.is_floating_point else torch.float32


def forward_last_logits(
    model: torch.nn.Module,
    cache: BatchKVCache,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor,
    mask_dtype: torch.dtype | None,
) -> torch.Tensor:
    """One forward of the model over the cache; the logits of each row's last position."""
    if mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=mask_dtype, device=mask.device).masked_fill_(
            ~mask, torch.finfo(mask_dtype).min
        )
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :]
