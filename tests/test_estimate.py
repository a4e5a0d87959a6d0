import argparse

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from peapod_scale import estimate


@pytest.fixture(scope="module")
def shapes():
    return {arch: estimate.model_shape(arch) for arch in ("t5-small", "flan-t5-base")}


def test_meta_count_matches_a_real_model():
    from peapod_scale.config import TrainConfig
    from peapod_scale.model.build import prompt_config
    from peapod_scale.model.peapod import PeaPOD
    from peapod_scale.model.presets import RELEASED_VOCAB_SIZE

    real = PeaPOD.from_preset("tiny", RELEASED_VOCAB_SIZE, prompt_config(TrainConfig(data="", output=""), 10_000))
    assert estimate.model_shape("tiny").params == sum(p.numel() for p in real.parameters())


@pytest.mark.parametrize("arch", ["t5-small", "flan-t5-base"])
def test_model_states_agree_with_deepspeeds_estimators(shapes, arch):
    shape, ranks = shapes[arch], 8
    psi, layer = shape.params, shape.largest_layer_params
    assert 60e6 < psi < 260e6 and layer == 32128 * shape.d_model  # the vocabulary embedding is the largest layer
    # DeepSpeed counts an fp32 gradient copy the ZeRO paper's 2+2+12 does not: 4Ψ/N at stage 2, 2Ψ/N at stage 3
    _, ds_gpu = estimate_zero2_model_states_mem_needs(psi, num_gpus_per_node=4, num_nodes=2, cpu_offload=False)
    ours = sum(estimate.model_state_bytes(psi, layer, 2, ranks).values())
    assert ds_gpu - ours == pytest.approx(4 * psi / ranks, abs=2)
    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(psi, layer, num_gpus_per_node=4, num_nodes=2, cpu_offload=False)
    ours = sum(estimate.model_state_bytes(psi, layer, 3, ranks).values())
    assert ds_gpu - ours == pytest.approx(2 * psi / ranks, abs=2)
    # full offload: the GPU holds the working layer (and our gradient partition) only
    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(psi, layer, num_gpus_per_node=4, num_nodes=2)
    offloaded = estimate.model_state_bytes(psi, layer, 3, ranks, offload=True)
    assert offloaded["working_layer"] == ds_gpu and offloaded["parameters"] == offloaded["optimizer"] == 0
    assert offloaded["cpu_offloaded"] == pytest.approx(14 * psi / ranks)


def test_stages_partition_what_the_paper_says():
    psi, ranks = 1_000_000, 4
    per_stage = [sum(estimate.model_state_bytes(psi, 0, stage, ranks).values()) for stage in range(4)]
    assert per_stage == [16 * psi, 4 * psi + 12 * psi / ranks, 2 * psi + 14 * psi / ranks, 16 * psi / ranks]
    with pytest.raises(ValueError):
        estimate.model_state_bytes(psi, 0, 1, ranks, offload=True)


def test_checkpointing_shrinks_the_activation_estimate(shapes, capsys):
    shape = shapes["t5-small"]
    full = estimate.activation_bytes(shape, 32, 128, 8, checkpointing=False)
    assert estimate.activation_bytes(shape, 64, 128, 8, checkpointing=False) == 2 * full
    assert estimate.activation_bytes(shape, 32, 128, 8, checkpointing=True) < full / 2
    args = argparse.Namespace(arch="t5-small", zero=3, offload=True, nodes=2, gpus_per_node=4, micro_batch=32,
                              encoder_len=128, decoder_len=8, users=10_000)
    text = estimate.report(args)
    assert "ds_configs/z3_offload.json" in text and "8 GPU(s)" in text and "activation-checkpointing" in text
