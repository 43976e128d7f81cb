"""Cross-rank gathers and row exchanges that also work on a single process with no process group."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, as constants (LAVIS ``concat_all_gather``).

    Detached on one process too, so a single process computes exactly what a rank does.
    """
    if world_size() == 1:  # no collective for a world of one (a 1-worker run computes the same)
        return x.detach().clone()
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad):
        # Every rank holds a gradient for every slice; sum them and keep this rank's slice.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank; gradients flow back to the rank that owns each slice."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@dataclass(frozen=True)
class RowPlan:
    """Who sends which rows to whom, so that each rank receives the rows it asked for (see :func:`plan_rows`).

    ``send_idx``: this rank's local rows to send, grouped by destination rank (then in that rank's request order);
    ``send_counts``/``recv_counts``: rows per peer rank; ``order``: where each requested row lands in the
    received buffer (which arrives grouped by owner rank).
    """

    send_idx: torch.Tensor
    send_counts: list[int]
    recv_counts: list[int]
    order: torch.Tensor


@torch.no_grad()
def plan_rows(want: torch.Tensor, rows_per_rank: int) -> RowPlan:
    """Plan fetching rows ``want`` (indices into the global batch, rank r owning rows [r*n, (r+1)*n)).

    Every rank must call it with the same number of requests; only the indices are gathered.
    """
    w, me = world_size(), rank()
    requests = gather_no_grad(want).view(w, -1)  # [W, n]: what every rank wants
    mine = requests // rows_per_rank == me
    send_idx = requests[mine] - me * rows_per_rank  # row-major: grouped by requesting rank, in its request order
    owner = want // rows_per_rank
    arrival = torch.argsort(owner, stable=True)  # received buffer: grouped by owner, in request order within one
    order = torch.empty_like(arrival)
    order[arrival] = torch.arange(len(want), device=want.device)
    return RowPlan(send_idx, mine.sum(1).tolist(), torch.bincount(owner, minlength=w).tolist(), order)


def _all_to_all_rows(x: torch.Tensor, out_counts: list[int], in_counts: list[int]) -> torch.Tensor:
    out = x.new_empty((sum(out_counts), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_counts, in_counts)
    return out


def _send_rows(x: torch.Tensor, plan: RowPlan, dtype: torch.dtype) -> torch.Tensor:
    received = _all_to_all_rows(x[plan.send_idx].to(dtype), plan.recv_counts, plan.send_counts)
    return received[plan.order]


class _FetchRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan: RowPlan, dtype):
        ctx.plan, ctx.shape, ctx.dtype = plan, x.shape, x.dtype
        return _send_rows(x, plan, dtype)

    @staticmethod
    def backward(ctx, grad):
        # Send each row's gradient back to its owner (in the wire dtype), which sums the gradients of its rows.
        plan = ctx.plan
        arrived = torch.empty_like(grad)
        arrived[plan.order] = grad
        back = _all_to_all_rows(arrived, plan.send_counts, plan.recv_counts)
        gx = torch.zeros(ctx.shape, dtype=ctx.dtype, device=grad.device)
        return gx.index_add_(0, plan.send_idx, back.to(ctx.dtype)), None, None


def fetch_rows(x: torch.Tensor, plan: RowPlan, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The rows of the global batch that ``plan`` requested, cast to ``dtype`` before they travel.

    Differentiable: each row's gradient goes back to the rank that owns it (what ``gather_with_grad(x)[want]``
    computes, without moving the rows nobody asked for).
    """
    dtype = dtype or x.dtype
    if world_size() == 1:
        # index_select, not x[idx]: indexing's backward adds repeated rows' gradients with atomics on CPU, in an
        # order that changes from run to run; index_select's backward (index_add_) adds them in index order.
        return x.index_select(0, plan.send_idx).to(dtype)
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _send_rows(x, plan, dtype)
    return _FetchRows.apply(x, plan, dtype)
