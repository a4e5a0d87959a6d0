from peapod_scale.config.train import TrainConfig
from peapod_scale.model.build import build_model
from peapod_scale.training.optimizer import optimizer_groups


def _model():
    cfg = TrainConfig(data="unused", output="unused", arch="tiny", pool_size=4, user_dim=8)
    return build_model(cfg, num_users=5, vocab_size=40)


def test_random_embedding_tables_get_the_scaled_learning_rate():
    model = _model()
    body, no_decay, fast = optimizer_groups(model, lr=1e-3, embedding_lr_scale=30, backbone_is_random=True)
    assert fast["lr"] == 1e-3 * 30 and body["lr"] == no_decay["lr"] == 1e-3
    fast_ids = {id(p) for p in fast["params"]}
    assert fast_ids == {id(model.user_prompt.users.weight), id(model.t5.shared.weight)}
    every = [p for g in (body, no_decay, fast) for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))  # each parameter once


def test_norm_weights_and_biases_get_no_weight_decay():
    model = _model()
    body, no_decay, _ = optimizer_groups(model, lr=1e-3, embedding_lr_scale=30, backbone_is_random=True)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in body  # the others: the config's decay
    norms = {id(p) for n, p in model.named_parameters() if "layer_norm" in n}
    biases = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    assert norms and {id(p) for p in no_decay["params"]} == norms | biases
    assert id(model.t5.encoder.block[0].layer[0].SelfAttention.q.weight) in {id(p) for p in body["params"]}


def test_pretrained_token_embeddings_keep_the_body_rate():
    model = _model()
    groups = optimizer_groups(model, lr=1e-3, embedding_lr_scale=30, backbone_is_random=False)
    assert [id(p) for p in groups[-1]["params"]] == [id(model.user_prompt.users.weight)]
    assert any(p is model.t5.shared.weight for p in groups[0]["params"])


def _one_step(train: str):
    import torch

    torch.manual_seed(0)
    cfg = TrainConfig(data="unused", output="unused", arch="tiny", pool_size=4, user_dim=8, train=train, dropout=0.0)
    model = build_model(cfg, num_users=5, vocab_size=40)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(optimizer_groups(model, 1e-2, 30, backbone_is_random=True))
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    mask = (ids != 0).long()
    loss = model(input_ids=ids, attention_mask=mask, whole_word_ids=torch.tensor([[1, 2, 3, 0], [1, 2, 0, 0]]),
                 user_ids=torch.tensor([1, 3]), task_ids=torch.tensor([0, 0]), labels=torch.tensor([[9, 1], [5, 1]])).loss
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return model, moved


def test_train_prompts_moves_only_the_prompt_side():
    model, moved = _one_step("prompts")
    backbone = {"t5." + n for n, _ in model.t5.named_parameters()}
    assert not moved & backbone
    assert moved == {"task_prompts", "whole_word.weight", "user_prompt.pool", "user_prompt.keys",
                     "user_prompt.query.weight", "user_prompt.users.weight"}
    groups = optimizer_groups(model, 1e-3, 30, backbone_is_random=True)
    assert sum(len(g["params"]) for g in groups) == len(moved)  # no optimizer state for frozen weights


def test_train_all_moves_the_backbone_too():
    model, moved = _one_step("all")
    assert "t5.shared.weight" in moved and "t5.encoder.block.0.layer.0.SelfAttention.q.weight" in moved
