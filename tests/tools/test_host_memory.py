"""Training ranks allocate large host tensors on transparent huge pages (peapod_scale/tools/host_memory.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# What a rank does: start in peapod_scale.train (deepspeed, torchrun and srun all run it), then allocate a
# large tensor, as DeepSpeed's flattened gradients are. Prints the variable and the tensor's huge-page kB.
RANK = r"""
import json, os
import peapod_scale.train  # noqa: F401  (the entry point every rank runs)
import torch

x = torch.ones(64 * 2**20 // 4)  # 64 MiB
address, huge, inside = x.data_ptr(), 0, False
with open("/proc/self/smaps") as smaps:
    for line in smaps:
        fields = line.split()
        if fields[0].count("-") == 1 and all(c in "0123456789abcdef-" for c in fields[0]):
            low, high = (int(v, 16) for v in fields[0].split("-"))
            inside = low <= address < high
        elif inside and fields[0] == "AnonHugePages:":
            huge = int(fields[1])
print(json.dumps({"env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "huge_kb": huge}))
"""


def _rank(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    done = subprocess.run([sys.executable, "-c", RANK], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _thp_mode() -> str | None:
    """The kernel's THP mode ('always', 'madvise', 'never'), None where it cannot be read."""
    try:
        text = THP_MODE_FILE.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def test_a_rank_asks_torch_for_huge_pages_and_gets_them_where_the_kernel_gives_them():
    rank = _rank(None)
    assert rank["env"] == "1"
    mode = _thp_mode()
    if mode in ("madvise", "always"):
        assert rank["huge_kb"] > 0, f"THP mode {mode}: the 64 MiB tensor is on 4 KiB pages"


def test_a_users_choice_is_kept():
    rank = _rank("0")
    assert rank["env"] == "0"
    if _thp_mode() == "madvise":  # only torch's madvise asks for huge pages in this mode
        assert rank["huge_kb"] == 0
