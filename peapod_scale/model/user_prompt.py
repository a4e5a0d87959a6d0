"""Personalised soft prompts: PeaPOD's shared prompt pool gated per user, or attention over neighbours.

Pool variant: the gating scores come from the user's embedding against learned keys; ``compose``
(softmax over the pool, weighted sum) runs inside this module's forward so ZeRO-3 has gathered
``pool`` before the op reads it. Neighbour variant: every parameter is read inside the forward of
the module that owns it, for the same reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peapod_scale.kernels import compose


class TableLookup:
    """Stands where ``nn.Embedding`` stands when the user table lives outside the model (sharded over the ranks,
    model/user_table.py): a plain callable, not a module, so ZeRO neither partitions it nor reduces its gradient.
    ``lookup(ids)`` returns the rows; its autograd edge leads back to the table's own optimizer."""

    def __init__(self, lookup):
        self.lookup = lookup

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lookup(ids)


class PoolUserPrompt(nn.Module):
    """``prompt_b = compose(<W_q u_b, K> / sqrt(d_k), P, tau)``: M prompts of L tokens, H gating heads.

    ``user_table="sharded"`` builds no table here: the trainer sets ``users`` to a ``TableLookup``."""

    def __init__(self, num_users: int, d_model: int, pool_size: int, prompt_length: int, heads: int,
                 user_dim: int, key_dim: int, tau: float = 1.0, compose_backend: str = "auto",
                 user_table: str = "dense"):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"--gate-heads {heads} must divide the model width {d_model}")
        self.heads, self.key_dim, self.tau, self.compose_backend = heads, key_dim, tau, compose_backend
        # index 0 unused: users are numbered from 1
        self.users = nn.Embedding(num_users + 1, user_dim) if user_table == "dense" else None
        self.query = nn.Linear(user_dim, heads * key_dim, bias=False)
        self.keys = nn.Parameter(torch.randn(heads, pool_size, key_dim) / math.sqrt(key_dim))
        self.pool = nn.Parameter(torch.randn(pool_size, prompt_length, d_model))

    def gate_logits(self, user_ids: torch.Tensor) -> torch.Tensor:
        if self.users is None:
            raise ValueError("the user table is sharded outside the model and not attached (model/user_table.py)")
        users = self.users(user_ids).to(self.query.weight.dtype)  # a sharded table's rows are fp32
        query = self.query(users).view(-1, self.heads, self.key_dim)
        return torch.einsum("bhk,hmk->bhm", query, self.keys) / math.sqrt(self.key_dim)

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        return compose(self.gate_logits(user_ids), self.pool, self.tau, backend=self.compose_backend)


class PerHeadValue(nn.Linear):
    """The value projection ``W_v: user_dim -> L x d``, applied head by head to mixed embeddings.

    Head h owns the h-th d/H slice of every prompt row, so it needs only its rows of ``W_v``, applied to
    its own attention-weighted mixture of neighbour embeddings. It stays an ``nn.Linear`` (same weight,
    parameter name and init as a projection of every neighbour, so saved models load unchanged) and
    reads the weight in its own forward, where ZeRO-3 has gathered it.
    """

    def __init__(self, user_dim: int, prompt_length: int, d_model: int, heads: int):
        super().__init__(user_dim, prompt_length * d_model, bias=False)
        self.prompt_length, self.heads = prompt_length, heads

    def forward(self, mixed: torch.Tensor) -> torch.Tensor:
        """``[B, H, user_dim]`` mixtures -> ``[B, L, d]`` prompts."""
        weight = self.weight.view(self.prompt_length, self.heads, -1, self.in_features)  # [L, H, d/H, user_dim]
        prompt = torch.einsum("lhek,bhk->blhe", weight, mixed.to(weight.dtype))
        return prompt.reshape(mixed.shape[0], self.prompt_length, -1)


class NeighborUserPrompt(nn.Module):
    """PeaPOD v2 (the released code): attend from the user to its most similar users.

    query ``W_q u_b``, keys ``W_k u_n`` and values ``W_v u_n`` (an ``L x d`` prompt per neighbour) for
    the user's n neighbours; H-head scaled dot-product attention, head h owning the h-th d/H slice of
    the prompt width. The values are linear in the embeddings, so each head takes its weighted sum over
    the small ``u_n`` first and projects once: ``out_h = W_v[h] (sum_n alpha_hn u_n)``. That is the same
    prompt as composing ``[B, n, L, d]`` projected values, with n times fewer FLOPs and no tensor of that
    size. Softmax and sum run in fp32 at least, like ``compose``'s reference.

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
        if compose_backend == "triton":
            raise ValueError("--compose triton fuses the shared pool of --user-prompt pool; the neighbour prompt "
                             "mixes n small embeddings per head in torch: use --compose auto or torch")
        self.heads, self.key_dim, self.tau = heads, key_dim, tau
        self.users = nn.Embedding(num_users + 1, user_dim)  # index 0: padding / unused
        self.query = nn.Linear(user_dim, heads * key_dim, bias=False)
        self.key = nn.Linear(user_dim, heads * key_dim, bias=False)
        self.value = PerHeadValue(user_dim, prompt_length, d_model, heads)
        self.register_buffer("neighbors", torch.zeros(num_users + 1, num_neighbors, dtype=torch.long))

    def _attention_logits(self, user_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, H, n]`` logits (padding at -inf), the ``[B, n]`` neighbour ids and their embeddings."""
        neighbor_ids = self.neighbors[user_ids]
        neighbours = self.users(neighbor_ids)
        query = self.query(self.users(user_ids)).view(-1, self.heads, self.key_dim)
        keys = self.key(neighbours).view(*neighbor_ids.shape, self.heads, self.key_dim)
        logits = torch.einsum("bhk,bnhk->bhn", query, keys) / math.sqrt(self.key_dim)
        return logits.masked_fill((neighbor_ids == 0)[:, None, :], float("-inf")), neighbor_ids, neighbours

    def gate_logits(self, user_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, H, n]`` logits (padding at -inf) and the ``[B, n]`` neighbour ids."""
        logits, neighbor_ids, _ = self._attention_logits(user_ids)
        return logits, neighbor_ids

    def forward(self, user_ids: torch.Tensor) -> torch.Tensor:
        logits, _, neighbours = self._attention_logits(user_ids)
        accumulate = torch.promote_types(neighbours.dtype, torch.float32)
        weights = torch.softmax(logits.to(accumulate) / self.tau, dim=-1)
        mixed = torch.einsum("bhn,bnk->bhk", weights, neighbours.to(accumulate))  # [B, H, user_dim]
        return self.value(mixed)
