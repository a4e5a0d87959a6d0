"""Huge pages for the large host tensors a training rank allocates afresh every step.

DeepSpeed's ZeRO-1/2 builds new flat tensors of whole gradients each step (it flattens the reduction
bucket before the all-reduce and the gradient partition before the optimizer): on CPU ranks, and for
optimizer states offloaded to the host, these are host tensors of hundreds of MB (240 MB for t5-small in
fp32). torch's CPU allocator passes large requests to the C library, which maps fresh pages for them and
unmaps them at free, so every step faults the same memory in again, 4 KiB at a time. Measured on this
project's 2-core CPU machine: flattening 60M fp32 elements into a new tensor took 100 ms against 27 ms
into a kept one. With ``THP_MEM_ALLOC_ENABLE=1`` torch aligns requests of 2 MiB and more to 2 MiB and asks
the kernel for transparent huge pages (madvise), 512 times fewer faults: 41 ms. t5-small, ZeRO-2, fp32 on 2
CPU ranks went from 8.6 to 11.0 samples/s, 0.65x to 0.78x plain DDP (benchmarks/bench_train.py, 2 repetitions
each). It does nothing where the kernel's THP mode is ``never``, and costs at most the rounding of large
requests up to 2 MiB.

torch reads the variable once, when it first allocates, so the entry point sets it before importing torch;
a value the user set (``THP_MEM_ALLOC_ENABLE=0`` to turn it off) is kept.
"""

from __future__ import annotations

import os
from typing import MutableMapping

HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages(environ: MutableMapping[str, str] = os.environ) -> None:
    """Let torch's CPU allocator use huge pages in this process and the ones it starts, unless the user chose."""
    environ.setdefault(HUGE_PAGES_ENV, "1")
