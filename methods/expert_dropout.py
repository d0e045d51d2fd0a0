"""Independent dropout masks for N experts of one input, without N masked copies of it.

The reference gives every expert its own nn.Dropout: expert i sees mᵢ ⊙ x / (1 − p) with mᵢ an
independent Bernoulli(1 − p) keep mask. Materialising the N copies costs N× the memory of x
(saved for backward) and N dense mask draws per step. Since only a fraction p of the entries is
dropped, the projection of every expert is written as

    (mᵢ ⊙ x) Aᵢᵀ = x Aᵢᵀ − Sᵢ Aᵢᵀ,        Sᵢ = (1 − mᵢ) ⊙ x   (sparse: ~p of the entries)

one dense GEMM for all experts plus a sparse correction over the dropped entries only:

- the dropped positions are drawn as geometric gaps between Bernoulli(p) events, which is exactly
  the law of independent per-entry draws, with ~p·size random numbers instead of size;
- they are drawn only for the (token, expert) rows the router selected: an unselected expert's
  output is weighted by a constant 0, so its mask can change neither the output nor a gradient;
- autograd keeps x once (as LoRA does) plus the drawn positions (int32, at most p·N·4 bytes per
  entry of x: 1.6 bytes at the defaults p = 0.05, N = 8) instead of N masked copies; backward
  rebuilds the indices from them (regenerating the draws would cost more time than it saves).

Rows are "groups" of A's rows: G = N experts with one mask each, or G = 1 (one mask shared by all
experts, `dropout_mode=shared`). The forward is one CSR product whatever G (row m's entries sit in
its group's block of columns); with G = 1 the backward is two dense GEMMs of LoRA's size, with G = N
it gathers per dropped entry (dense there would mean N (T, in) intermediates). The sparse products
run in fp32 whatever the autocast dtype.
"""

import math
import warnings
from dataclasses import dataclass

import torch


def drop_positions(count: int, p: float, device: torch.device) -> torch.Tensor:
    """Sorted positions in [0, count) of independent Bernoulli(p) events (int32 when they fit).

    Gaps between successive events are Geometric(p) on {1, 2, …}: ⌊log(1 − U) / log(1 − p)⌋ + 1
    with U uniform on [0, 1) in float64 (so the law is exact far below any testable level), drawn
    from torch's default generator on `device` (seeded by torch.manual_seed).
    """
    index_dtype = torch.int32 if count <= torch.iinfo(torch.int32).max else torch.int64
    if count == 0:
        return torch.empty(0, dtype=index_dtype, device=device)
    mean = count * p
    draws = int(mean + 8.0 * math.sqrt(mean * (1.0 - p)) + 16)  # a second round is rare
    per_log_keep = 1.0 / math.log1p(-p)
    pieces, end = [], -1.0
    while end < count - 1:
        uniform = torch.rand(draws, dtype=torch.float64, device=device)
        positions = uniform.neg_().log1p_().mul_(per_log_keep).floor_().add_(1.0).cumsum_(0).add_(end)
        pieces.append(positions)
        end = float(positions[-1])
    positions = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    positions = positions[: int(torch.searchsorted(positions, float(count)))]
    return positions.to(index_dtype)


@dataclass
class ActiveRows:
    """The (token, group) rows whose masks matter, group-major (the order the masks are drawn in)."""

    h_row: torch.Tensor  # (M,) row of h viewed as (tokens·groups, width): token·G + group
    x_offset: torch.Tensor  # (M,) token·in: where the row's input starts in x.flatten()
    weight_offset: torch.Tensor  # (M,) group·in: where its group's block starts in Aᵀ grouped (G·in, width)
    width_in: int

    @classmethod
    def of(cls, active: torch.Tensor, width_in: int) -> "ActiveRows":
        """active: (tokens, groups) bool."""
        groups = active.shape[1]
        group, token = active.t().nonzero().unbind(1)
        return cls(token * groups + group, token * width_in, group * width_in, width_in)


@dataclass
class DroppedEntries:
    """Dropped entries (row, column) of the active rows' masks, sorted by row then column."""

    row: torch.Tensor  # (K,) index into the ActiveRows
    column: torch.Tensor  # (K,) input feature j

    @classmethod
    def at(cls, positions: torch.Tensor, width_in: int) -> "DroppedEntries":
        """positions: flat indices into the (active rows, in) mask."""
        row = positions.div(width_in, rounding_mode="floor")
        return cls(row, positions - row * width_in)

    def weight_index(self, rows: ActiveRows) -> torch.Tensor:
        """Row of Aᵀ grouped (G·in, width) each entry multiplies: its group's block, column j."""
        return rows.weight_offset.index_select(0, self.row) + self.column

    def x_index(self, rows: ActiveRows) -> torch.Tensor:
        return rows.x_offset.index_select(0, self.row) + self.column  # index_select: ~5× faster than [] here

    def row_starts(self, positions: torch.Tensor, rows: ActiveRows) -> torch.Tensor:
        """(M + 1,) CSR offsets: active row m's entries are [starts[m], starts[m+1])."""
        boundaries = torch.arange(len(rows.h_row) + 1, dtype=positions.dtype, device=positions.device) * rows.width_in
        return torch.searchsorted(positions, boundaries)

    def dense_keep_mask(self, rows: ActiveRows, tokens: int, groups: int, dtype=torch.float64) -> torch.Tensor:
        """The (tokens, groups, in) keep mask these entries stand for (1 on inactive rows): for tests."""
        dropped = torch.zeros(tokens * groups, rows.width_in, dtype=dtype, device=self.row.device)
        dropped[rows.h_row[self.row], self.column] = 1.0
        return 1.0 - dropped.view(tokens, groups, rows.width_in)


def _sparse_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for the sparse products under bf16/fp16 autocast (CPU CSR kernels need it), fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def _grouped_transpose(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A (G·w, in) → (G·in, w): row g·in + j holds column j of group g's block."""
    return weight.view(groups, -1, weight.shape[1]).transpose(1, 2).reshape(-1, weight.shape[0] // groups)


def _sparse_times_weight(
    rows: ActiveRows, entries: DroppedEntries, starts: torch.Tensor, values: torch.Tensor, grouped: torch.Tensor
) -> torch.Tensor:
    """S_g A_gᵀ for every active row at once: (M, width). S is one CSR matrix over (active rows, G·in)
    whose row m only has entries in its group's block of columns, so a single product with Aᵀ
    grouped (G·in, width) multiplies every row by its own group's block."""
    columns = entries.weight_index(rows)
    with torch.autocast(values.device.type, enabled=False), warnings.catch_warnings():  # CSR kernels: fp32/fp64 only
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        sparse = torch.sparse_csr_tensor(starts, columns, values, (len(rows.h_row), grouped.shape[0]), check_invariants=False)
        return sparse @ grouped


class _DropoutCorrection(torch.autograd.Function):
    """−[S_g A_gᵀ]_g: what dropping the drawn entries removes from x Aᵀ, on the active rows (0 elsewhere)."""

    @staticmethod
    def forward(ctx, x, weight, active, p: float):
        tokens, width_in = x.shape
        groups = active.shape[1]
        rows = ActiveRows.of(active, width_in)
        positions = drop_positions(len(rows.h_row) * width_in, p, x.device)
        entries = DroppedEntries.at(positions, width_in)
        exact = _sparse_dtype(x)
        values = x.reshape(-1).take(entries.x_index(rows)).to(exact)
        negated = _grouped_transpose(weight.to(exact).neg(), groups)  # the products come out subtracted, with no pass over K
        removed = _sparse_times_weight(rows, entries, entries.row_starts(positions, rows), values, negated)
        correction = removed.new_zeros(tokens * groups, removed.shape[1]).index_copy_(0, rows.h_row, removed)
        ctx.save_for_backward(x, weight, active, positions)
        return correction.view(tokens, -1)

    @staticmethod
    def backward(ctx, grad_correction):
        x, weight, active, positions = ctx.saved_tensors
        tokens, width_in = x.shape
        groups = active.shape[1]
        rows = ActiveRows.of(active, width_in)
        entries = DroppedEntries.at(positions, width_in)
        exact = _sparse_dtype(x)
        if groups == 1:
            return _one_mask_backward(x, weight, entries.x_index(rows), grad_correction, exact)
        # Per dropped entry (row, j): the gradient that reached its row, and column j of its group's −A.
        # (Dense per-group products instead measured 2× slower: N (T, in) intermediates.)
        grad_rows = grad_correction.reshape(tokens * groups, -1).index_select(0, rows.h_row).to(exact).index_select(0, entries.row)
        weight_index = entries.weight_index(rows)
        negated_columns = _grouped_transpose(weight.to(exact).neg(), groups).index_select(0, weight_index)
        x_index = entries.x_index(rows)
        grad_x = torch.zeros(tokens * width_in, dtype=exact, device=x.device)
        grad_x.index_add_(0, x_index, (grad_rows * negated_columns).sum(1))
        values = x.reshape(-1).take(x_index).to(exact)
        grad_weight = torch.zeros(groups * width_in, grad_rows.shape[1], dtype=exact, device=x.device)
        grad_weight.index_add_(0, weight_index, grad_rows.mul_(values.unsqueeze(1)).neg_())
        grad_weight = grad_weight.view(groups, width_in, -1).transpose(1, 2).reshape(weight.shape)
        return grad_x.view_as(x).to(x.dtype), grad_weight.to(weight.dtype), None, None


def _one_mask_backward(x, weight, x_index, grad_correction, exact):
    """Gradients of −S Aᵀ when one mask serves every expert (G = 1, `dropout_mode=shared`): S holds x's
    values at the dropped entries, so grad x = −(grad A) taken there and grad A = −gradᵀ S, two
    dense GEMMs of LoRA's size. Gathering an N·r-wide row per dropped entry instead cost 1.6× more."""
    tokens, width_in = x.shape
    grad = grad_correction.to(exact)
    dropped = torch.zeros(tokens * width_in, dtype=exact, device=x.device)
    dropped.index_copy_(0, x_index, x.reshape(-1).take(x_index).to(exact))  # S, dense (T, in)
    grad_weight = (grad.t() @ dropped.view(tokens, width_in)).neg_()
    grad_x = torch.zeros(tokens * width_in, dtype=exact, device=x.device)
    grad_x.index_copy_(0, x_index, (grad @ weight.to(exact)).reshape(-1).take(x_index).neg_())
    return grad_x.view_as(x).to(x.dtype), grad_weight.to(weight.dtype), None, None


def dropout_correction(x: torch.Tensor, weight: torch.Tensor, active: torch.Tensor, p: float) -> torch.Tensor:
    """The term that turns x Aᵀ into [(m_g ⊙ x) A_gᵀ]_g, (T, G·w), with an independent keep mask m_g
    per (token, group) row selected in `active` (T, G) and none on the others (callers weight
    those by 0). x: (T, in); weight A: (G·w, in). Scale the sum by 1/(1 − p) as nn.Dropout does."""
    return _DropoutCorrection.apply(x, weight, active, p)
