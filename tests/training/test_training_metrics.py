import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from peapod_scale.distributed.ranks import HostCollectives
from peapod_scale.training import metrics as throughput


def test_flop_formula_matches_torch_flop_counter_on_a_training_step():
    config = T5Config(vocab_size=500, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=3, num_heads=4,
                      dropout_rate=0.0, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    batch, enc_len, dec_len = 3, 17, 5
    embeds = torch.randn(batch, enc_len, 64, requires_grad=True)
    labels = torch.randint(1, 500, (batch, dec_len))
    with FlopCounterMode(display=False) as counter:
        model(inputs_embeds=embeds, labels=labels).loss.backward()
    expected = throughput.flop_counter(model)(batch, enc_len, dec_len)
    # the counter misses the cross-attention score products (~2% here), the formula leaves out norms
    assert abs(expected - counter.get_total_flops()) < 0.03 * counter.get_total_flops()


def test_peak_table_knows_the_usual_devices():
    assert throughput.device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.device_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert throughput.device_peak_flops("NVIDIA H200") == 989e12
    assert throughput.device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert throughput.device_peak_flops("Some CPU") is None


def test_step_meter_counts_samples_tokens_and_phases():
    meter = throughput.StepMeter(lambda b, e, d: 1.0)
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[5, 6, -100], [7, -100, -100]])}
    for name in meter.PHASES:
        meter.phase(name)
    meter.count(batch, prompt_tokens=3)
    meter.end_step()
    assert (meter.samples, meter.tokens, meter.flops) == (2, 5 + 6 + 3, 1.0)
    summary = meter.summary(HostCollectives(world_size=1))
    assert {"throughput/samples_per_s", "throughput/tokens_per_s_per_rank", "time/data_s", "time/optimizer_s",
            "memory/peak_gib"} <= set(summary)
    assert summary["memory/peak_gib"] > 0
    assert meter.samples == 0  # the window starts again


def test_peak_memory_is_per_window_not_since_the_start():
    meter = throughput.StepMeter()
    block = bytearray(256 * 2**20)  # a 256 MiB spike in the first window (a validation's beam search, say)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page so it is resident
    del block  # gone before the window closes, as a validation's cache is
    first = meter.summary(HostCollectives(world_size=1))["memory/peak_gib"]
    second = meter.summary(HostCollectives(world_size=1))["memory/peak_gib"]
    assert first - second > 0.2  # the second window does not carry the first one's peak


def test_a_frozen_backbone_counts_one_backward_product_not_two():
    config = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0)
    model = T5ForConditionalGeneration(config)
    full, prompts = throughput.flop_counter(model), throughput.flop_counter(model, trains_backbone=False)
    assert prompts(4, 10, 3) / full(4, 10, 3) == 2 / 3


def test_peak_flops_match_device_names_exactly():
    assert throughput.device_peak_flops("NVIDIA H200 NVL") == 835e12  # not the SXM H200's 989e12
    assert throughput.device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.device_peak_flops("NVIDIA H800") is None  # unknown: MFU is not reported


def test_on_a_device_only_the_first_step_of_a_window_waits_for_it():
    waits = []
    meter = throughput.StepMeter(synchronize=lambda: waits.append(1))
    waits.clear()  # the construction's own drain
    for step in range(10):  # a 10-step window, 2 micro-steps a step
        for _ in range(2):
            for name in meter.PHASES:
                meter.phase(name)
        meter.end_step()
    assert len(waits) == 2 * len(meter.PHASES)  # not 10 x 2 x 4: the host runs ahead on the other 9 steps
    assert meter.timed_steps == 1 and meter.steps == 10
    summary = meter.summary(HostCollectives(world_size=1))
    assert summary["time/forward_s"] >= 0 and len(waits) == 2 * len(meter.PHASES) + 1  # reset drains once
    cpu = throughput.StepMeter()  # no device: every step is timed, nothing waits
    for _ in range(3):
        cpu.phase("data")
        cpu.end_step()
    assert cpu.timed_steps == 3 and cpu.syncs == 0
