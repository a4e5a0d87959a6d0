from peapod_scale.config import TrainConfig
from peapod_scale.model.build import build_model, optimizer_groups


def _model():
    cfg = TrainConfig(data="unused", output="unused", arch="tiny", pool_size=4, user_dim=8)
    return build_model(cfg, num_users=5, vocab_size=40)


def test_random_embedding_tables_get_the_scaled_learning_rate():
    model = _model()
    body, fast = optimizer_groups(model, lr=1e-3, embedding_lr_scale=30, backbone_is_random=True)
    assert fast["lr"] == 1e-3 * 30 and body["lr"] == 1e-3
    fast_ids = {id(p) for p in fast["params"]}
    assert fast_ids == {id(model.user_prompt.users.weight), id(model.t5.shared.weight)}
    every = [p for g in (body, fast) for p in g["params"]]
    assert len(every) == len({id(p) for p in every}) == len(list(model.parameters()))  # each parameter once


def test_pretrained_token_embeddings_keep_the_body_rate():
    model = _model()
    groups = optimizer_groups(model, lr=1e-3, embedding_lr_scale=30, backbone_is_random=False)
    assert [id(p) for p in groups[1]["params"]] == [id(model.user_prompt.users.weight)]
    assert any(p is model.t5.shared.weight for p in groups[0]["params"])
