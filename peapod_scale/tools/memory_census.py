"""The tensors a DeepSpeed training process holds, counted by storage and sorted by what they are kept for.

The ZeRO formulas count parameters, gradients and optimizer states; DeepSpeed also allocates reduction
buckets, flat copies for its collectives and fp32 gradient partitions, some only for part of a step.
``memory_estimate.py`` models all of them; this census is what it is checked against, on a real engine
(``benchmarks/bench_train.py``, ``tests/training/test_memory_estimate.py``).

A snapshot takes every tensor Python can reach (``gc.get_objects()``, which includes the locals of running
frames), counts each storage once at its full size (a view and its base are one allocation; an allocator
hands out the whole size whether or not it is touched) and gives it the first label that claims it:

  parameters       the module's parameters (at ZeRO-3 their partitions, the gathered full tensors and the
                   all-gathers in flight)
  master weights   the inner optimizer's parameters where they are not the module's (fp32 copies), and
                   DeepSpeed's fp32 partitions
  moments          the inner optimizer's state (AdamW's exp_avg and exp_avg_sq)
  buckets          what DeepSpeed's optimizer keeps under an attribute named like *bucket* or ipg*
  gradients        ``.grad`` of parameters and master weights, DeepSpeed tensors under a *grad* attribute
  communication    the tensor a large collective was called with (see ``StepProbes``)
  deepspeed other  anything else reachable from the engine's optimizer
  other            the rest (batches, module buffers, tensors of the data path): not model state

``StepProbes`` takes snapshots at the moments a step holds the most: the end of the forward (ZeRO-3's
gathered parameters), the end of the backward before ZeRO-1/2 release their buckets, inside the first
large collectives of each kind, and inside the inner optimizer's step (fp32 gradients and moments).
"""

from __future__ import annotations

import collections
import gc
import re

import torch

MODEL_STATES = ("parameters", "master weights", "moments", "gradients", "buckets", "communication",
                "deepspeed other")
_WATCHED_COLLECTIVES = ("all_reduce", "reduce", "reduce_scatter_tensor", "all_gather_into_tensor", "broadcast")


def _storage(tensor) -> tuple[int, int] | None:
    """(address, bytes) of the tensor's storage; None for meta tensors and empty placeholders."""
    if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
        return None
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    size = storage.nbytes()
    return (storage.data_ptr(), size) if size else None


def _reachable_tensors(root, path: str, found: list, seen: set, depth: int = 0) -> None:
    """(attribute path, tensor) for every tensor under DeepSpeed / torch.optim objects, dicts and sequences."""
    if id(root) in seen or depth > 12:
        return
    seen.add(id(root))
    if isinstance(root, torch.Tensor):
        found.append((path, root))
        if root.grad is not None:
            _reachable_tensors(root.grad, path + ".grad", found, seen, depth + 1)
        return
    if isinstance(root, dict):
        for key, value in list(root.items()):
            _reachable_tensors(value, f"{path}[{key if isinstance(key, (str, int)) else type(key).__name__}]",
                               found, seen, depth + 1)
    elif isinstance(root, (list, tuple, set, collections.deque)):
        for index, value in enumerate(list(root)):
            _reachable_tensors(value, f"{path}[{index}]", found, seen, depth + 1)
    elif type(root).__module__.startswith(("deepspeed", "torch.optim")) and hasattr(root, "__dict__"):
        for key, value in list(vars(root).items()):
            _reachable_tensors(value, f"{path}.{key}", found, seen, depth + 1)


class Census:
    """Snapshots of one engine's tensors (``module``, ``optimizer`` and ``basic_optimizer`` as DeepSpeed names them)."""

    def __init__(self, engine):
        self.engine = engine
        self.communication: set[tuple[int, int]] = set()  # the storage a collective is running on, during its snapshot
        self.snapshots: list[dict] = []

    def _labels(self) -> dict[tuple[int, int], tuple[str, str]]:
        """storage -> (label, where it was found)."""
        engine, labels = self.engine, {}

        def claim(tensor, label: str, where: str) -> None:
            key = _storage(tensor)
            if key is not None and key not in labels:
                labels[key] = (label, where)

        parameters = list(engine.module.named_parameters())
        for name, parameter in parameters:
            claim(parameter, "parameters", name)
            claim(getattr(parameter, "ds_tensor", None), "parameters", f"{name}.ds_tensor")
        inner = engine.basic_optimizer
        masters = [p for group in inner.param_groups for p in group["params"]]
        for master in masters:
            claim(master, "master weights", "inner optimizer param_groups")
        for state in inner.state.values():
            for key, value in state.items():
                claim(value, "moments", f"inner optimizer state {key}")
        found: list = []
        _reachable_tensors(engine.optimizer, "optimizer", found, set())
        for path, tensor in found:  # ZeRO-3's all-gathers in flight: parameters being fetched
            if "inflight_param_registry" in path:
                claim(tensor, "parameters", path)
        for path, tensor in found:  # ZeRO-3 hands its fp32 partitions to the inner optimizer only for the step
            if "fp32" in path and not path.endswith(".grad"):
                claim(tensor, "master weights", path)
        for path, tensor in found:
            if re.search(r"bucket|ipg", path, re.IGNORECASE):
                claim(tensor, "buckets", path)
        for name, tensor in parameters + [("inner optimizer param", m) for m in masters]:
            claim(tensor.grad, "gradients", f"{name}.grad")
            claim(getattr(tensor, "grad_accum", None), "gradients", f"{name}.grad_accum")
        for path, tensor in found:
            if "grad" in path.rsplit(".", 1)[-1].lower() or ".grad" in path:
                claim(tensor, "gradients", path)
        for key in self.communication:
            labels.setdefault(key, ("communication", "a collective's argument"))
        for path, tensor in found:
            claim(tensor, "deepspeed other", path)
        return labels

    def snapshot(self, tag: str) -> dict:
        """Bytes per label now; ``model_states`` is the sum over MODEL_STATES; ``largest``: the ten largest storages."""
        labels = self._labels()
        held = collections.Counter()
        sizes: dict[tuple[int, int], tuple[str, str]] = {}
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor):
                key = _storage(obj)
                if key is not None and key not in sizes:
                    sizes[key] = labels.get(key, ("other", f"{tuple(obj.shape)} {obj.dtype}"))
        for key, label in labels.items():  # tensors held only from C++ (a .grad no Python object refers to)
            sizes.setdefault(key, label)
        for key, (label, _) in sizes.items():
            held[label] += key[1]
        largest = sorted(sizes.items(), key=lambda item: -item[0][1])[:10]
        row = {"tag": tag, "bytes": dict(held), "model_states": sum(held[label] for label in MODEL_STATES),
               "largest": [[label, where, key[1]] for key, (label, where) in largest]}
        self.snapshots.append(row)
        return row

    def peak(self) -> dict:
        """The snapshot that held the most model state."""
        return max(self.snapshots, key=lambda row: row["model_states"])


class StepProbes:
    """Census snapshots inside a step, where DeepSpeed holds the most; ``active`` switches them on.

    ``min_collective_numel``: collectives on fewer elements (losses, norms, flags) take no snapshot; of the
    others, the first MAX_PER_COLLECTIVE calls of each kind in a step do (a ZeRO-3 step gathers every module).
    """

    MAX_PER_COLLECTIVE = 8

    def __init__(self, census: Census, min_collective_numel: int):
        # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
        import deepspeed.comm

        self.census, self.active, self.step = census, False, 0
        self._seen: collections.Counter = collections.Counter()  # (step, collective) -> snapshots taken
        engine = census.engine
        self._handles = [engine.basic_optimizer.register_step_post_hook(lambda *_: self.take("in the optimizer step")),
                         engine.module.register_forward_hook(lambda *_: self.take("end of the forward"))]
        self._restore = []
        release = getattr(engine.optimizer, "_release_ipg_buffers", None)  # ZeRO-1/2: end of the backward
        if release is not None:
            def release_after_census(*args, **kwargs):
                self.take("end of the backward, buckets still held")
                return release(*args, **kwargs)
            engine.optimizer._release_ipg_buffers = release_after_census
            self._restore.append(lambda: delattr(engine.optimizer, "_release_ipg_buffers"))
        for name in _WATCHED_COLLECTIVES:
            original = getattr(deepspeed.comm, name, None)
            if original is None:
                continue
            setattr(deepspeed.comm, name, self._watch(name, original, min_collective_numel))
            self._restore.append(lambda name=name, original=original: setattr(deepspeed.comm, name, original))

    def _watch(self, name: str, original, min_numel: int):
        def watched(tensor, *args, **kwargs):
            if (self.active and isinstance(tensor, torch.Tensor) and tensor.numel() >= min_numel
                    and self._seen[self.step, name] < self.MAX_PER_COLLECTIVE):
                self._seen[self.step, name] += 1
                key = _storage(tensor)
                self.census.communication = {key} if key else set()
                self.take(f"in {name} of {tensor.numel():,} {str(tensor.dtype).replace('torch.', '')}")
                self.census.communication = set()
            return original(tensor, *args, **kwargs)
        return watched

    def take(self, tag: str) -> None:
        if self.active:
            self.census.snapshot(f"step {self.step}: {tag}")

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        for restore in self._restore:
            restore()


def measure_steps(trainer, steps: int = 3) -> dict:
    """Run ``steps`` training steps of a ``Trainer``'s engine with the probes on from the second (the first
    allocates the moments); this rank's peak snapshot and every snapshot's total."""
    engine = trainer.engine
    census = Census(engine)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    probes = StepProbes(census, min_collective_numel=max(1, params // 64))
    batches = iter(trainer.stream)
    engine.train()
    try:
        for step in range(steps):
            probes.step, probes.active = step, step >= 1
            _, batch = next(batches)
            loss = engine(**{k: v.to(engine.device) for k, v in batch.items()}).loss
            engine.backward(loss)
            probes.take("after the backward")
            engine.step()
            probes.take("after the step")
    finally:
        probes.close()
        batches.close()
    return {"peak": census.peak(), "snapshots": [{"tag": s["tag"], "model_states": s["model_states"]}
                                                 for s in census.snapshots]}
