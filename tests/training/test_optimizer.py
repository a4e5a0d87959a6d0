"""ChunkedAdamW against torch's AdamW, and the config the trainer hands DeepSpeed with it."""

import copy

import pytest
import torch

from peapod_scale.distributed import ds_config
from peapod_scale.training import optimizer as optim


def _params(shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=generator)) for shape in shapes]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_chunked_steps_give_torch_adamw_numbers_bit_for_bit(amsgrad):
    shapes = [(1000, 37), (5,), (3, 7)]  # 37,000 elements: 10 pieces of 4,096 (the last one short)
    ours, theirs = _params(shapes), _params(shapes)
    settings = dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=amsgrad)
    groups = lambda params: [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0, "lr": 1e-2}]
    chunked = optim.ChunkedAdamW(groups(ours), chunk=4096, **settings)
    reference = torch.optim.AdamW(groups(theirs), foreach=False, **settings)
    generator = torch.Generator().manual_seed(1)
    for step in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ours[1].grad = None if step == 2 else ours[1].grad  # a parameter without a gradient this step is skipped
        theirs[1].grad = None if step == 2 else theirs[1].grad
        chunked.step()
        reference.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for a, b in zip(ours, theirs):
        mine, torchs = chunked.state[a], reference.state[b]
        assert sorted(mine) == sorted(torchs)
        assert all(torch.equal(mine[key], torchs[key]) for key in mine)
    assert float(chunked.state[ours[1]]["step"]) == 4.0 and float(chunked.state[ours[0]]["step"]) == 5.0
    # the state dicts load into each other: checkpoints are interchangeable
    torch.optim.AdamW(groups(_params(shapes)), **settings).load_state_dict(chunked.state_dict())


def test_cpu_tensors_are_stepped_in_pieces_and_cuda_ones_whole(monkeypatch):
    """The bit-for-bit test would also pass on torch's whole-tensor path: here the pieces are counted."""
    ours, theirs = _params([(64,), (10,)]), _params([(64,), (10,)])
    chunked, reference = optim.ChunkedAdamW(ours, chunk=16), torch.optim.AdamW(theirs, foreach=False)
    sizes, torch_adam = [], optim.torch_adam

    def spy(**kwargs):
        sizes.append([p.numel() for p in kwargs["params"]])
        return torch_adam(**kwargs)

    monkeypatch.setattr(optim, "torch_adam", spy)
    for a, b in zip(ours, theirs):
        a.grad = torch.ones_like(a)
        b.grad = torch.ones_like(b)
    chunked.step()
    reference.step()
    assert sizes == [[16, 16, 16, 16, 10]]  # 64 elements in 4 pieces, then the small one whole
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    if torch.cuda.is_available():
        on_gpu = optim.ChunkedAdamW([torch.nn.Parameter(torch.ones(64, device="cuda"))], chunk=16)
        on_gpu.param_groups[0]["params"][0].grad = torch.ones(64, device="cuda")
        on_gpu.step()
        assert len(sizes) == 1  # torch's own step


def _resolved(name):
    return ds_config.resolve(name, world_size=2, micro_batch_size=None, grad_accum=None, lr=None, precision="fp32",
                             cuda=False)


@pytest.mark.parametrize("name", ["z1", "z2", "z3"])
def test_shipped_torch_adam_configs_get_chunked_adamw_with_their_settings(name):
    config = _resolved(name)
    before = copy.deepcopy(config)
    given, build = optim.for_deepspeed(config)
    assert config == before  # the resolved config (saved with the run) is untouched
    assert "optimizer" not in given and given["zero_allow_untested_optimizer"] is True
    assert "zero_force_ds_cpu_optimizer" not in given
    built = build([{"params": _params([(4,)])}])
    assert isinstance(built, optim.ChunkedAdamW) and isinstance(built, torch.optim.AdamW)
    params = config["optimizer"]["params"]
    assert built.defaults["betas"] == tuple(params["betas"]) and built.defaults["eps"] == params["eps"]
    assert built.defaults["weight_decay"] == params["weight_decay"] and built.defaults["lr"] == params["lr"]


def test_offload_lets_the_cpu_torch_adam_through_and_other_optimizers_stay_deepspeeds():
    given, build = optim.for_deepspeed(_resolved("z3_offload"))
    assert build is not None and given["zero_force_ds_cpu_optimizer"] is False
    for section in ({"type": "AdamW", "params": {"lr": 1e-3}},  # DeepSpeed's fused / CPU Adam
                    {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True, "adam_w_mode": False}},
                    {"type": "Lion", "params": {"lr": 1e-4}}):
        config = {"train_batch_size": 2, "optimizer": section}
        assert optim.for_deepspeed(config) == (config, None)
