"""Personalised soft prompts: PeaPOD's shared prompt pool, gated per user.

The gating scores come from the user's embedding against learned keys; ``compose`` (softmax over the
pool, weighted sum) runs inside this module's forward so ZeRO-3 has gathered ``pool`` before the op
reads it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peapod_scale.kernels import compose


class PoolUserPrompt(nn.Module):
    """``prompt_b = compose(<W_q u_b, K> / sqrt(d_k), P, tau)``: M prompts of L tokens, H gating heads."""

    def __init__(self, num_users: int, d_model: int, pool_size: int, prompt_length: int, heads: int,
                 user_dim: int, key_dim: int, tau: float = 1.0, compose_backend: str = "auto"):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"--gate-heads {heads} must divide the model width {d_model}")
        self.heads, self.key_dim, self.tau, self.compose_backend = heads, key_dim, tau, compose_backend
        self.users = nn.Embedding(num_users + 1, user_dim)  # index 0 unused: users are numbered from 1
        self.query = nn.Linear(user_dim, heads * key_dim, bias=False)
        self.keys = nn.Parameter(torch.randn(heads, pool_size, key_dim) / math.sqrt(key_dim))
        self.pool = nn.Parameter(torch.randn(pool_size, prompt_length, d_model))

    def gate_logits(self, user_ids: torch.Tensor) -> torch.Tensor:
        query = self.query(self.users(user_ids)).view(-1, self.heads, self.key_dim)
        return torch.einsum("bhk,hmk->bhm", query, self.keys) / math.sqrt(self.key_dim)

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        return compose(self.gate_logits(user_ids), self.pool, self.tau, backend=self.compose_backend)
