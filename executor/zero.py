"""ZeRO stage 1 over the data-parallel group, as the cost layer prices ``zero1``: one
reduce-scatter of the gradients and one all-gather of the updated weights a step.

Each rank's parameters live in one flat buffer per dtype (the parameters become views of it),
split into ``d`` equal shards over the ``d`` data-parallel ranks. A step reduce-scatters the flat
gradients (each rank receives the sum of its shard and takes the mean), runs AdamW on its shard
only (it alone holds that shard's two moments), and all-gathers the updated shards back into the
buffer, which updates every parameter in place. This is the partitioning of Rajbhandari et al.,
"ZeRO: Memory Optimizations Toward Training Trillion Parameter Models" (SC'20), §5.1 (P_os),
with the collectives of Megatron-LM's distributed optimizer (a reduce-scatter of the gradient
buffer, an all-gather of the parameter buffer). torch's ``ZeroRedundancyOptimizer`` instead
all-reduces whole gradients and broadcasts each parameter from its owner, a call per tensor.

Plain tensors only (tp 1): a tensor-parallel DTensor cannot be re-pointed into the buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["ZeroOneAdamW"]


class _Bucket:
    """The parameters of one dtype as views of one flat buffer, padded to ``d`` equal shards."""

    def __init__(self, params: list[torch.Tensor], d: int, rank: int):
        self.params = params
        numel = sum(p.numel() for p in params)
        self.shard_numel = -(-numel // d)
        self.flat = torch.zeros(self.shard_numel * d, dtype=params[0].dtype, device=params[0].device)
        offset = 0
        for p in params:
            view = self.flat[offset : offset + p.numel()]
            view.copy_(p.detach().reshape(-1))
            p.data = view.view_as(p)
            offset += p.numel()
        #: this rank's shard: a view of the buffer, what the inner optimizer steps
        self.shard = self.flat[rank * self.shard_numel : (rank + 1) * self.shard_numel]

    def flat_grads(self) -> torch.Tensor:
        """The parameters' gradients in the buffer's layout (zeros where a parameter has none)."""
        out = torch.zeros_like(self.flat)
        offset = 0
        for p in self.params:
            if p.grad is not None:
                out[offset : offset + p.numel()].copy_(p.grad.reshape(-1))
            offset += p.numel()
        return out


class ZeroOneAdamW:
    """AdamW whose state and step are sharded over ``group`` (see the module docstring). The
    gradients it is handed are each rank's own (not yet reduced); it reduces them itself."""

    def __init__(self, params: Sequence[torch.Tensor], group, lr: float):
        self.group = group
        self.d, rank = dist.get_world_size(group), dist.get_rank(group)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        self.buckets = [_Bucket(ps, self.d, rank) for ps in by_dtype.values()]
        #: the inner optimizer over this rank's shards (its ``state`` is what the rank holds)
        self.optim = torch.optim.AdamW([b.shard for b in self.buckets], lr=lr)

    @property
    def state(self):
        return self.optim.state

    def step(self) -> None:
        """Reduce-scatter the gradients, step this rank's shards, all-gather the updated shards."""
        for b in self.buckets:
            grad = torch.empty_like(b.shard)
            dist.reduce_scatter_tensor(grad, b.flat_grads(), group=self.group)
            b.shard.grad = grad.div_(self.d)
        self.optim.step()
        for b in self.buckets:
            dist.all_gather_into_tensor(b.flat, b.shard.clone(), group=self.group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for b in self.buckets:
            b.shard.grad = None
            for p in b.params:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()
