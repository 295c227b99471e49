"""BatchNorm (BN) norm-act step, with an optional normalization batch size ("ghost batches").

Labatie et al., NeurIPS 2021, §3 and Appendix A.1; docs/METHOD.md §1. In training, statistics are
taken per channel over (N, H, W) of each sub-batch of ``norm_batch`` inputs (32 on ImageNet, 128 on
CIFAR in the paper), which can be smaller than the batch; in eval mode, running averages are used.
BN is the one batch-dependent norm of the zoo; :class:`SyncBatchNormStep` takes its statistics
over the batch of all processes of a ``torch.distributed`` group (for comparisons in data-parallel
training; batch-independent norms never need it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

from proxynorm.layers.activation import Activation
from proxynorm.layers.kernels import upcast
from proxynorm.layers.norm_act import NormAct, NormStep
from proxynorm.layers.validation import check_num_features, check_positive


class BatchNormStep(NormStep):
    r"""Affine-free batch standardization with running statistics and ghost batches.

    :math:`y = (x - \mu_{N,H,W}) / \sqrt{\sigma^2_{N,H,W} + \epsilon}` with the population variance
    over each normalization batch. Running averages follow PyTorch: ``running = (1 - momentum) ·
    running + momentum · stat``, with the unbiased variance; with ghost batches, ``stat`` is the
    average over the sub-batches of the step.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        norm_batch: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.eps = check_positive("eps", eps)
        if check_positive("momentum", momentum) > 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        if norm_batch is not None and (isinstance(norm_batch, bool) or int(norm_batch) < 1):
            raise ValueError(f"norm_batch must be None or an int >= 1, got {norm_batch!r}")
        self.norm_batch = None if norm_batch is None else int(norm_batch)
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer(
            "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
        )

    def _apply(self, fn, *args, **kwargs):
        # Running statistics stay in at least float32 after .half() / .bfloat16(), like the
        # statistics of the batch they average (the input is upcast before normalizing).
        super()._apply(fn, *args, **kwargs)
        for name in ("running_mean", "running_var"):
            buf = getattr(self, name)
            if buf is not None and buf.dtype in (torch.float16, torch.bfloat16):
                setattr(self, name, buf.float())
        return self

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def _ghost(self, x: Tensor) -> bool:
        return self.training and self.norm_batch is not None and x.shape[0] > self.norm_batch

    def _batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            None if weight is None else weight.to(x.dtype),
            None if bias is None else bias.to(x.dtype),
            self.training,
            self.momentum,
            self.eps,
        )

    def forward(self, x: Tensor) -> Tensor:
        x32 = upcast(x)
        if not self._ghost(x):
            return self._batch_norm(x32, None, None).to(x.dtype)
        chunks = x32.split(self.norm_batch)
        if chunks[-1].numel() == chunks[-1].shape[1]:  # one value per channel: no statistics
            raise ValueError(
                f"{type(self).__name__}(norm_batch={self.norm_batch}): a batch of {x.shape[0]} "
                f"leaves a last ghost batch of 1 input of shape {tuple(x.shape[1:])}, which "
                "has one value per channel; use a batch size that norm_batch divides"
            )
        y = torch.cat([F.batch_norm(c, None, None, training=True, eps=self.eps) for c in chunks])
        with torch.no_grad():
            dims = [0] + list(range(2, x.dim()))
            stats = [torch.var_mean(c, dim=dims, correction=1) for c in chunks]
            var = torch.stack([v for v, _ in stats]).mean(0)
            mean = torch.stack([m for _, m in stats]).mean(0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return y.to(x.dtype)

    def forward_affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._ghost(x):
            return super().forward_affine(x, weight, bias)
        return self._batch_norm(upcast(x), weight, bias).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"norm_batch={self.norm_batch}"
        )


class SyncBatchNormStep(BatchNormStep):
    r""":class:`BatchNormStep` with statistics over the batch of every process of a group.

    :math:`y = (x - \mu) / \sqrt{\sigma^2 + \epsilon}` with :math:`\mu, \sigma^2` the mean and
    population variance per channel over (N, H, W) of the union of the processes' batches (two
    all-reduces: the sum, then the centered sum of squares, as a single process would compute
    them). Gradients flow through the all-reduces. Without an initialized process group, a group of
    one process, or in eval mode, it is :class:`BatchNormStep` without ghost batches. Unlike
    :class:`torch.nn.SyncBatchNorm` it runs on CPU (gloo) as well as CUDA (NCCL).

    Args:
        num_features: number of channels C.
        eps: stability constant (> 0).
        momentum: running-average momentum in (0, 1].
        process_group: the group to synchronize over (default: the whole world).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, None, device, dtype)
        self.process_group = process_group

    def _synced(self) -> bool:
        return (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def _all_sum(self, t: Tensor) -> Tensor:
        return dist_fn.all_reduce(t, group=self.process_group)

    def forward(self, x: Tensor) -> Tensor:
        if not self._synced():
            return super().forward(x)
        x32 = upcast(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        with torch.no_grad():
            count = torch.tensor(float(x32.numel() // x32.shape[1]), device=x.device)
            dist.all_reduce(count, group=self.process_group)
        mean = self._all_sum(x32.sum(dims)) / count
        centered = x32 - mean.view(shape)
        var = self._all_sum(centered.square().sum(dims)) / count
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        with torch.no_grad():
            unbiased = var * (count / (count - 1).clamp(min=1))
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return y.to(x.dtype)

    def forward_affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._synced():
            return NormStep.forward_affine(self, x, weight, bias)
        return super().forward_affine(x, weight, bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, synchronized"


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """Replace every :class:`BatchNormStep` in ``module`` by a :class:`SyncBatchNormStep` with the
    same running statistics (in place; returns ``module``). Ghost batches (``norm_batch``) are
    dropped: synchronized statistics are over the whole batch of all processes. Other norms are
    left alone, so this is a no-op for batch-independent specs.
    """
    for name, child in module.named_children():
        if isinstance(child, BatchNormStep) and not isinstance(child, SyncBatchNormStep):
            synced = SyncBatchNormStep(child.num_features, child.eps, child.momentum, process_group)
            synced.load_state_dict(child.state_dict())
            synced.to(device=child.running_mean.device, dtype=child.running_mean.dtype)
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            convert_sync_batchnorm(child, process_group)
    return module


class BatchNormAct2d(NormAct):
    r"""BatchNorm step + activation step (optionally proxy-normalized: BN+PN).

    .. math:: y = \frac{x - \mu_{N,H,W}(x)}{\sqrt{\sigma^2_{N,H,W}(x) + \epsilon}},\qquad
              z = \varphi(\gamma y + \beta)\ \text{or Eq. (7) with PN}

    Population variance over each normalization batch in training; running averages in eval.

    Args:
        num_features: number of channels C.
        act: activation φ (name or callable).
        eps: the norm's stability constant (> 0).
        momentum: running-average momentum in (0, 1].
        norm_batch: normalization batch size; ``None`` normalizes over the whole batch. A batch
            larger than ``norm_batch`` is split into consecutive sub-batches of ``norm_batch``
            inputs (the last one may be smaller), each normalized with its own statistics.
        proxy: proxy-normalize the activation step (BN+PN).
        **kwargs: activation-step options of :class:`NormAct`: ``apply_act`` (``False`` gives
            exactly BatchNorm with affine), ``bias``, ``proxy_affine``, ``proxy_eps``,
            ``n_samples``, ``proxy_scale``.

    Shape:
        Input (N, C) or (N, C, H, W); output the same.

    Example::

        >>> layer = BatchNormAct2d(64, norm_batch=32)
        >>> out = layer(torch.randn(128, 64, 8, 8))   # 4 ghost batches of 32
    """

    def __init__(
        self,
        num_features: int,
        act: Activation = "relu",
        eps: float = 1e-5,
        momentum: float = 0.1,
        norm_batch: int | None = None,
        proxy: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        norm = BatchNormStep(num_features, eps, momentum, norm_batch, device, dtype)
        super().__init__(num_features, norm, act, proxy=proxy, device=device, dtype=dtype, **kwargs)
