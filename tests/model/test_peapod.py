import pytest
import torch

from peapod_scale.model.peapod import PeaPOD, PeaPODConfig

VOCAB, USERS = 50, 7


def _model(**overrides) -> PeaPOD:
    torch.manual_seed(0)
    settings = dict(num_users=USERS, pool_size=5, prompt_length=3, gate_heads=2, user_dim=8, key_dim=8,
                    task_prompt_length=2)
    config = PeaPODConfig(**{**settings, **overrides})
    return PeaPOD.from_preset("tiny", VOCAB, config, dropout_rate=0.0)


def _batch(batch=3, length=6):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0
    ids[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "whole_word_ids": (torch.arange(length) + 1).repeat(batch, 1) * mask,
            "user_ids": torch.tensor([1, 2, USERS])[:batch], "task_ids": torch.tensor([0, 1, 0])[:batch]}


def test_encoder_input_is_task_prompt_then_user_prompt_then_tokens():
    model = _model()
    batch = _batch()
    embeds, mask = model.encoder_inputs(**batch)
    assert embeds.shape == (3, 2 + 3 + 6, model.t5.config.d_model)
    assert torch.equal(mask[:, :5], torch.ones(3, 5, dtype=torch.long))  # prompts are always attended
    assert torch.equal(mask[:, 5:], batch["attention_mask"])
    assert torch.equal(embeds[1, :2], model.task_prompts[1])
    assert torch.allclose(embeds[:, 2:5], model.user_prompt(batch["user_ids"]))


def test_pod_variant_has_only_task_prompts():
    model = _model(user_prompt="none")
    embeds, mask = model.encoder_inputs(**_batch())
    assert model.user_prompt is None and embeds.shape[1] == 2 + 6 and mask.shape[1] == 8


def test_gradients_reach_every_prompt_parameter():
    model = _model()
    labels = torch.tensor([[5, 1, -100], [6, 7, 1], [8, 1, -100]])
    model(**_batch(), labels=labels).loss.backward()
    for name in ("task_prompts", "whole_word.weight", "user_prompt.pool", "user_prompt.keys",
                 "user_prompt.query.weight", "user_prompt.users.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # only the two task prompts used and only the batch's users get gradient
    users_grad = model.user_prompt.users.weight.grad
    assert users_grad[[1, 2, USERS]].abs().sum() > 0 and users_grad[[0, 3, 4, 5, 6]].abs().sum() == 0
    assert model.task_prompts.grad[2].abs().sum() == 0


def test_padded_label_positions_do_not_count():
    model = _model().eval()
    batch = _batch()
    short = torch.tensor([[5, 1], [6, 1], [8, 1]])
    padded = torch.tensor([[5, 1, -100, -100], [6, 1, -100, -100], [8, 1, -100, -100]])
    assert torch.allclose(model(**batch, labels=short).loss, model(**batch, labels=padded).loss)


def test_one_hot_gating_with_one_head_returns_that_pool_entry():
    model = _model(gate_heads=1, tau=0.01)
    prompt = model.user_prompt
    with torch.no_grad():
        prompt.keys.zero_()
        prompt.keys[0, 3, 0] = 1.0
        prompt.query.weight.zero_()
        prompt.query.weight[0, 0] = 1.0
        prompt.users.weight.fill_(100.0)  # logit of entry 3 >> others once divided by tau
    out = prompt(torch.tensor([1, 4]))
    assert torch.allclose(out, prompt.pool[3].expand(2, -1, -1), atol=1e-5)


def test_save_and_load_give_identical_logits(tmp_path):
    model = _model().eval()
    batch = _batch()
    labels = torch.tensor([[5, 1], [6, 1], [8, 1]])
    model.save_pretrained(tmp_path)
    loaded = PeaPOD.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert torch.equal(model(**batch, labels=labels).logits, loaded(**batch, labels=labels).logits)


def test_generation_returns_the_requested_beams():
    model = _model().eval()
    out = model.generate(**_batch(), num_beams=4, num_return_sequences=2, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 6 and out.shape[1] <= 4


def test_bad_prompt_settings_are_refused():
    with pytest.raises(ValueError, match="user-prompt"):
        PeaPODConfig(num_users=3, user_prompt="mystery")
    with pytest.raises(ValueError, match="gate-heads"):
        _model(gate_heads=3)  # tiny's width 64 is not divisible by 3
