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


class NeighborUserPrompt(nn.Module):
    """PeaPOD v2 (the released code): attend from the user to its most similar users.

    query ``W_q u_b``, keys ``W_k u_n`` and values ``W_v u_n`` (an ``L x d`` prompt per neighbour) for
    the user's n neighbours; H-head scaled dot-product attention, head h owning the h-th d/H slice of
    the prompt width, computed by ``compose`` on per-sample values ``[B, n, L, d]``.

    ``neighbors`` is a buffer (saved with the model, never trained): row u lists user u's neighbour ids;
    id 0 is padding and gets no weight. ``prepare`` computes the lists from training interactions.
    """

    def __init__(self, num_users: int, num_neighbors: int, d_model: int, prompt_length: int, heads: int,
                 user_dim: int, key_dim: int, tau: float = 1.0, compose_backend: str = "auto"):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"--gate-heads {heads} must divide the model width {d_model}")
        if num_neighbors < 1:
            raise ValueError("--user-prompt neighbors needs at least one neighbour per user")
        self.heads, self.key_dim, self.tau, self.compose_backend = heads, key_dim, tau, compose_backend
        self.prompt_length, self.d_model = prompt_length, d_model
        self.users = nn.Embedding(num_users + 1, user_dim)  # index 0: padding / unused
        self.query = nn.Linear(user_dim, heads * key_dim, bias=False)
        self.key = nn.Linear(user_dim, heads * key_dim, bias=False)
        self.value = nn.Linear(user_dim, prompt_length * d_model, bias=False)
        self.register_buffer("neighbors", torch.zeros(num_users + 1, num_neighbors, dtype=torch.long))

    def gate_logits(self, user_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, H, n]`` logits (padding at -inf) and the ``[B, n]`` neighbour ids."""
        neighbor_ids = self.neighbors[user_ids]
        query = self.query(self.users(user_ids)).view(-1, self.heads, self.key_dim)
        keys = self.key(self.users(neighbor_ids)).view(*neighbor_ids.shape, self.heads, self.key_dim)
        logits = torch.einsum("bhk,bnhk->bhn", query, keys) / math.sqrt(self.key_dim)
        return logits.masked_fill((neighbor_ids == 0)[:, None, :], float("-inf")), neighbor_ids

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        logits, neighbor_ids = self.gate_logits(user_ids)
        values = self.value(self.users(neighbor_ids)).view(*neighbor_ids.shape, self.prompt_length, self.d_model)
        return compose(logits, values, self.tau, backend=self.compose_backend)
