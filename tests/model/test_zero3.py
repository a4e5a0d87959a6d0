"""build_model under ZeRO-3: parameters are partitioned as they are built and initialised as without ZeRO.

Runs one gloo rank in a subprocess (deepspeed.zero.Init needs a process group; a subprocess keeps it
out of the test process).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, torch, deepspeed

    from peapod_scale.config.train import TrainConfig
    from peapod_scale.model.build import build_model
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrainConfig(data="unused", output="unused", arch="tiny-flan", pool_size=8, user_dim=8)
    ds = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    torch.manual_seed(7)
    plain = dict(build_model(cfg, num_users=5, vocab_size=300).named_parameters())
    torch.manual_seed(7)
    model = build_model(cfg, num_users=5, vocab_size=300, ds_config=ds)
    params = dict(model.named_parameters())
    out = {"partitioned": all(hasattr(p, "ds_id") for p in params.values()),
           "local_elements": sum(p.numel() for p in params.values()),
           "full_elements": sum(p.ds_numel for p in params.values()),
           "lm_head_is_shared": model.t5.lm_head.weight is model.t5.shared.weight}
    with deepspeed.zero.GatheredParameters(list(params.values())):
        out["names_equal"] = sorted(params) == sorted(plain)
        out["differ"] = [name for name, p in params.items() if not torch.equal(p, plain[name])]
        out["q_std"] = params["t5.encoder.block.0.layer.0.SelfAttention.q.weight"].std().item()
    print("RESULT " + json.dumps(out))
""")


def _free_port() -> int:
    with socket.socket() as probe:  # a fixed port collides with other jobs on a shared machine
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_zero3_build_partitions_every_parameter_and_equals_the_plain_build(tmp_path):
    """zero.Init partitions modules before Hugging Face's post_init runs, which then initialises empty
    placeholders; the model's own init pass must give exactly the weights of a plain build."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["partitioned"] and result["local_elements"] == 0 < result["full_elements"]
    assert result["names_equal"] and result["differ"] == []
    assert abs(result["q_std"] - (64 * 16) ** -0.5) < 0.01  # T5's init (d_model * d_kv)^-1/2, not PyTorch's default
    assert result["lm_head_is_shared"] is False
