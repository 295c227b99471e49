"""BatchNorm (BN) norm-act step, with an optional normalization batch size ("ghost batches").

Labatie et al., NeurIPS 2021, §3 and Appendix A.1; ``SPEC.md`` §1. In training, statistics are
taken per channel over (N, H, W) of each sub-batch of ``norm_batch`` inputs (32 on ImageNet, 128 on
CIFAR in the paper), which can be smaller than the batch; in eval mode, running averages are used.
BN is the one batch-dependent norm of the zoo.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from proxynorm.layers.activation import Activation
from proxynorm.layers.norm_act import NormAct, NormStep, upcast
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
            weight,
            bias,
            self.training,
            self.momentum,
            self.eps,
        )

    def forward(self, x: Tensor) -> Tensor:
        x32 = upcast(x)
        if not self._ghost(x):
            return self._batch_norm(x32, None, None).to(x.dtype)
        chunks = x32.split(self.norm_batch)
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
