"""The neighbour user prompt (PeaPOD v2), its build from a prepared dataset, and --user-init mf."""

import copy
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peapod_scale.config.train import TrainConfig
from peapod_scale.data.prepare.dataset import prepare_dataset
from peapod_scale.data.prepare.user_similarity import read_neighbors, read_user_embeddings
from peapod_scale.kernels import compose_reference
from peapod_scale.model.build import build_model
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

from helpers import synthetic_ratings, write_udata

VOCAB, USERS, N = 50, 7, 3


def _model(**overrides) -> PeaPOD:
    torch.manual_seed(0)
    settings = dict(num_users=USERS, user_prompt="neighbors", num_neighbors=N, prompt_length=3, gate_heads=2,
                    user_dim=8, key_dim=8, task_prompt_length=2)
    model = PeaPOD.from_preset("tiny", VOCAB, PeaPODConfig(**{**settings, **overrides}), dropout_rate=0.0)
    lists = torch.tensor([[0, 0, 0], [2, 3, 4], [1, 3, 0], [1, 2, 5], [5, 6, 7], [4, 6, 7], [7, 5, 4], [6, 5, 4]])
    model.user_prompt.neighbors.copy_(lists)
    return model


def _batch():
    ids = torch.tensor([[5, 6, 7, 1, 0], [8, 9, 10, 11, 1]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "whole_word_ids": torch.tensor([[1, 2, 3, 0, 0],
            [1, 1, 2, 3, 0]]), "user_ids": torch.tensor([2, 4]), "task_ids": torch.tensor([0, 1])}


def test_encoder_input_shape_and_mask():
    model = _model()
    embeds, mask = model.encoder_inputs(**_batch())
    assert embeds.shape == (2, 2 + 3 + 5, 64) and mask.shape == (2, 10)
    assert mask[:, :5].eq(1).all() and torch.equal(mask[:, 5:], _batch()["attention_mask"])
    assert torch.allclose(embeds[:, 2:5], model.user_prompt(torch.tensor([2, 4])))


def test_prompt_is_multi_head_attention_over_the_neighbours():
    prompt = _model().user_prompt
    user = 3
    u, nbrs = prompt.users.weight[user], prompt.users.weight[prompt.neighbors[user]]
    q, k = prompt.query(u).view(2, 8), prompt.key(nbrs).view(3, 2, 8)
    v = F.linear(nbrs, prompt.value.weight).view(3, 3, 64)  # each neighbour projected to an L x d prompt
    expected = torch.empty(3, 64)
    for h in range(2):
        weights = torch.softmax((k[:, h] @ q[h]) / math.sqrt(8), dim=0)
        expected[:, h * 32:(h + 1) * 32] = torch.einsum("n,nld->ld", weights, v[:, :, h * 32:(h + 1) * 32])
    assert torch.allclose(prompt(torch.tensor([user]))[0], expected, atol=1e-5)


def test_padding_neighbours_get_no_weight():
    prompt = _model().user_prompt
    before = prompt(torch.tensor([2]))  # lists [1, 3, 0]: one padding slot
    logits, _ = prompt.gate_logits(torch.tensor([2]))
    assert torch.isinf(logits[0, :, 2]).all() and torch.isfinite(logits[0, :, :2]).all()
    with torch.no_grad():
        prompt.users.weight[0].normal_()
    assert torch.equal(before, prompt(torch.tensor([2])))


def test_gradients_reach_every_trainable_part():
    model = _model()
    model(**_batch(), labels=torch.tensor([[5, 1], [6, 1]])).loss.backward()
    trainable = dict(model.named_parameters())
    for name in ("task_prompts", "whole_word.weight", "user_prompt.users.weight", "user_prompt.query.weight",
                 "user_prompt.key.weight", "user_prompt.value.weight"):
        assert trainable[name].grad is not None and trainable[name].grad.abs().sum() > 0, name
    assert "user_prompt.neighbors" not in trainable
    touched = model.user_prompt.users.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [1, 2, 3, 4, 5, 6, 7]  # users 2, 4 and their neighbours 1, 3 / 5, 6, 7


def _projected_values_forward(self, user_ids):
    """The path before the rewrite: project every neighbour to an L x d prompt, then compose."""
    logits, neighbor_ids = self.gate_logits(user_ids)
    values = F.linear(self.users(neighbor_ids), self.value.weight)
    values = values.view(*neighbor_ids.shape, self.value.prompt_length, -1)  # [B, n, L, d]
    if values.dtype == torch.float64:  # compose_reference accumulates in fp32: its formula, in fp64
        weights = torch.softmax(logits / self.tau, dim=-1)
        head_values = values.view(*values.shape[:-1], self.heads, -1)
        return torch.einsum("bhn,bnlhe->blhe", weights, head_values).flatten(2)
    return compose_reference(logits, values, self.tau)


def _loss_and_grads(model, batch, labels):
    model.zero_grad()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _assert_close_to_scale(actual, expected, rtol, scaled_atol, what=""):
    """assert_close with the absolute tolerance a fraction of the expected tensor's largest magnitude.

    The two paths sum in different orders: float32 rounding then differs by ~1e-6 of a gradient's scale
    (7e-7 on a 0.73 gradient, measured on an AVX-512 CPU), more than a fixed atol fitted to one machine allows;
    a wrong formula differs by the scale itself.
    """
    atol = scaled_atol * float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, dict(rtol=1e-12, scaled_atol=1e-13)),
                                             (torch.float32, dict(rtol=2e-5, scaled_atol=1e-5))])
@pytest.mark.parametrize("heads,tau", [(1, 1.0), (2, 0.7), (4, 1.3)])
def test_mixing_embeddings_first_equals_composing_projected_values(heads, tau, dtype, tolerance):
    """Same loss and same gradient of every parameter as the [B, n, L, d] path (float32: the old code
    as it was, compose_reference included)."""
    model = _model(gate_heads=heads, tau=tau).to(dtype)
    before = copy.deepcopy(model)
    before.user_prompt.forward = types.MethodType(_projected_values_forward, before.user_prompt)
    batch = {**_batch(), "user_ids": torch.tensor([2, 7])}  # user 2 has a padding neighbour
    labels = torch.tensor([[5, 1], [6, 1]])
    loss, grads = _loss_and_grads(model, batch, labels)
    loss_before, grads_before = _loss_and_grads(before, batch, labels)
    _assert_close_to_scale(loss, loss_before, **tolerance, what="loss")
    assert grads.keys() == grads_before.keys()
    for name, grad in grads.items():
        _assert_close_to_scale(grad, grads_before[name], **tolerance, what=name)
    users = torch.arange(1, USERS + 1)
    _assert_close_to_scale(model.user_prompt(users), before.user_prompt(users), **tolerance, what="prompts")


def test_no_per_neighbour_prompt_is_kept_for_backward():
    """Nothing of the [B, n, L, d] size is saved for backward (the old path kept n projected prompts)."""
    prompt = _model(gate_heads=2).user_prompt
    users = torch.arange(1, USERS + 1)
    per_neighbour = len(users) * N * 3 * 64
    for forward, expect_small in ((prompt.forward, True), (types.MethodType(_projected_values_forward, prompt), False)):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            forward(users)
        assert (max(saved) < per_neighbour / 2) is expect_small, (saved, per_neighbour)


def test_compose_triton_is_refused_for_the_neighbour_prompt():
    with pytest.raises(ValueError, match="--compose auto or torch"):
        _model(compose_backend="triton")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("neighbors")
    out = root / "data"
    manifest = prepare_dataset("movielens", str(write_udata(root, synthetic_ratings())), str(out), num_negatives=3,
                               neighbors=5, mf_dim=8)
    return out, manifest


def _cfg(data, **overrides):
    return TrainConfig(**{"data": str(data), "output": "unused", "arch": "tiny", "user_dim": 8, "dropout": 0.0,
                          "user_prompt": "neighbors", **overrides})


def test_build_loads_neighbour_lists_without_the_user_and_they_survive_save_load(dataset, tmp_path):
    data, manifest = dataset
    users = manifest["counts"]["users"]
    model = build_model(_cfg(data), users, VOCAB)
    buffer = model.user_prompt.neighbors
    assert buffer.shape == (users + 1, 5) and not buffer.requires_grad
    assert np.array_equal(buffer[1:].numpy(), read_neighbors(data, manifest))
    assert not (buffer[1:] == torch.arange(1, users + 1)[:, None]).any()
    model.save_pretrained(tmp_path)
    assert torch.equal(PeaPOD.from_pretrained(tmp_path).user_prompt.neighbors, buffer)


@pytest.mark.parametrize("variant", ["pool", "neighbors"])
def test_user_init_mf_copies_the_prepared_embeddings(dataset, variant):
    data, manifest = dataset
    users = manifest["counts"]["users"]
    mf = build_model(_cfg(data, user_prompt=variant, user_init="mf"), users, VOCAB).user_prompt.users.weight
    assert torch.equal(mf[1:].detach(), torch.from_numpy(read_user_embeddings(data, manifest)))
    random = build_model(_cfg(data, user_prompt=variant), users, VOCAB).user_prompt.users.weight
    assert not torch.equal(random[1:], mf[1:])
    with pytest.raises(ValueError, match="mf-dim"):
        build_model(_cfg(data, user_prompt=variant, user_init="mf", user_dim=16), users, VOCAB)


def test_neighbors_need_prepared_lists(tmp_path):
    out = tmp_path / "data"
    manifest = prepare_dataset("movielens", str(write_udata(tmp_path, synthetic_ratings())), str(out),
                               num_negatives=3, neighbors=0)
    with pytest.raises(FileNotFoundError, match="--neighbors"):
        build_model(_cfg(out), manifest["counts"]["users"], VOCAB)
