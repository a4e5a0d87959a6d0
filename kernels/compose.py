"""Prompt composition: per-head gating softmax over a prompt pool, then the weighted sum.

    out[b, l, h*Dh:(h+1)*Dh] = sum_m softmax(logits[b, h, :] / tau)[m] * values[(b,) m, l, h*Dh:(h+1)*Dh]

``values`` is a shared pool ``[M, L, D]`` (PeaPOD's seed variant) or per-sample ``[B, M, L, D]``
(the neighbour variant). Head h owns the h-th D/H slice of the width.
"""

from __future__ import annotations

import torch


def compose_reference(logits: torch.Tensor, values: torch.Tensor, tau: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Plain torch ground truth; accumulates in fp32 and returns ``values``' dtype."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, H, M], got shape {tuple(logits.shape)}")
    batch, heads, pool = logits.shape
    shared = values.dim() == 3
    if not shared and values.dim() != 4:
        raise ValueError(f"values must be [M, L, D] or [B, M, L, D], got shape {tuple(values.shape)}")
    m_dim, length, width = values.shape[-3:]
    if m_dim != pool:
        raise ValueError(f"logits have M={pool} but values have M={m_dim}")
    if width % heads:
        raise ValueError(f"H={heads} heads must divide the width D={width}")
    weights = torch.softmax(logits.float() / tau, dim=-1)  # [B, H, M]
    head_values = values.float().reshape(*values.shape[:-1], heads, width // heads)  # [(B,) M, L, H, Dh]
    if shared:
        out = torch.einsum("bhm,mlhd->blhd", weights, head_values)
    else:
        out = torch.einsum("bhm,bmlhd->blhd", weights, head_values)
    return out.reshape(batch, length, width).to(values.dtype)


def compose(logits: torch.Tensor, values: torch.Tensor, tau: float | torch.Tensor = 1.0, backend: str = "auto") -> torch.Tensor:
    """Dispatch: ``auto`` picks Triton on CUDA and the torch reference elsewhere."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"compose backend must be auto, torch or triton, got {backend!r}")
    if backend == "torch" or (backend == "auto" and not values.is_cuda):
        return compose_reference(logits, values, tau)
    raise NotImplementedError("the Triton compose kernel is not built yet; use backend='torch'")
