"""build_model under ZeRO-3: parameters are partitioned as they are built, prompt init still applies.

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

    from peapod_scale.config import TrainConfig
    from peapod_scale.model.build import build_model
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrainConfig(data="unused", output="unused", arch="tiny-flan", pool_size=8, user_dim=8)
    ds = {"train_batch_size": 1, "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    model = build_model(cfg, num_users=5, vocab_size=300, ds_config=ds)
    params = dict(model.named_parameters())
    out = {"partitioned": all(hasattr(p, "ds_id") for p in params.values()),
           "local_elements": sum(p.numel() for p in params.values()),
           "full_elements": sum(p.ds_numel for p in params.values())}
    with deepspeed.zero.GatheredParameters([params["whole_word.weight"], params["user_prompt.pool"], params["t5.lm_head.weight"],
                             params["t5.shared.weight"]]):
        out["whole_word_std"] = params["whole_word.weight"].std().item()
        out["pool_std"] = params["user_prompt.pool"].std().item()
        out["lm_head_is_shared"] = model.t5.lm_head.weight is model.t5.shared.weight
    print("RESULT " + json.dumps(out))
""")


def _free_port() -> int:
    with socket.socket() as probe:  # a fixed port collides with other jobs on a shared machine
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_zero3_build_partitions_every_parameter_and_keeps_prompt_init(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["partitioned"] and result["local_elements"] == 0 < result["full_elements"]
    assert 0.07 < result["whole_word_std"] < 0.13  # 0.1 x the initializer factor, written through the gather
    assert 0.8 < result["pool_std"] < 1.2
    assert result["lm_head_is_shared"] is False
