"""Task-alternated training batches, rendered and tokenized in the loader workers.

Why this shape:

- **One task per optimizer step, the same on every rank.** POD's task-alternated batches only hold
  globally if all ranks (and all micro-steps of one accumulated step) train the same task, so the
  task of step n is a pure function of ``(seed, weights, n)``: a golden-ratio (Weyl) sequence
  ``u_n = frac(offset(seed) + n·0.618…)`` mapped through the cumulative weights. Unlike independent
  draws its task counts stay within a few steps of ``n·weight`` in every window, so each logging
  window sees every task; unlike a fixed round-robin it honours any real-valued weights.
- **One row source per kind of row, not per task.** Sequential and top-N both read the ``train``
  split and share one position in it; explanation reads ``train_explanation`` (only rows whose
  target has text, written by ``prepare``), so it never has to skip textless rows and every batch is
  full. Each source is a ``ShardStream``: one global sequence of global batches (micro-batch x
  accumulation x ranks rows), each rank taking its slice. An optimizer step takes the next global
  batch of its task's source; since all ranks follow the same task sequence they consume identical
  (source, epoch, global batch) positions and so run the same number of steps. Memory is one window
  per source per worker.
- **Workers own the expensive part.** Micro-batch n is built by worker ``(n - start) % workers``,
  which every worker can work out alone by walking the same schedule; PyTorch's loader takes
  batches from its workers round-robin, so the main process receives tensors in micro-batch order,
  whatever the worker count. Top-N negatives are seeded by the micro-batch's place in the global
  sequence (optimizer step and row offset inside its global batch), not by the rank or worker, so an
  example gets the same candidates on any number of ranks. Workers hand over numpy arrays, wrapped
  as tensors without a copy on arrival: a torch tensor crosses the process boundary through a
  shared-memory file of its own, which for these small batches cost ~7 ms per batch against <1 ms
  for pickling the arrays through the pipe.
- **The position is small, exact and world-size free.** ``(optimizer steps done, micro-steps into
  the next, (epoch, global batch) per source)``, counted in the main process as batches are handed
  to the trainer (not as workers prefetch), so ``load_state_dict`` on a new stream, with any worker
  count and any rank count that keeps the global batch, continues at exactly the next global batch.
"""

from __future__ import annotations

import copy
import math
from typing import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from peapod_scale.data import templates
from peapod_scale.data.batches import TaskBatcher
from peapod_scale.data.shard_stream import SAME_ON_RESUME, ShardStream, check_resumable

SOURCE_OF = {"sequential": "train", "topn": "train", "explanation": "train_explanation"}
SOURCE_COLUMNS = {"train": ["user", "history", "target"], "train_explanation": ["user", "target", "explanation"]}
_GOLDEN = (math.sqrt(5) - 1) / 2


def parse_task_weights(tasks: str, task_weights: str | None, supported: Sequence[str], data: str = "the dataset",
                       tasks_is_default: bool = False) -> dict[str, float]:
    """``--task-weights`` (or equal weights over ``--tasks``) -> {task: weight > 0} in ``templates.TASKS`` order.

    ``--task-weights`` names the tasks itself (weight 0 leaves one out); an explicit ``--tasks``
    must then name the same tasks.
    """
    listed = [t.strip() for t in tasks.split(",") if t.strip()]
    _check_names("--tasks", tasks, listed)
    if task_weights is None:
        weights = {task: 1.0 for task in listed}
        option, value = "--tasks", tasks
    else:
        weights, option, value = _parse_pairs(task_weights), "--task-weights", task_weights
        named = {task for task, weight in weights.items() if weight > 0}
        if not tasks_is_default and set(listed) != named:
            raise ValueError(f"--tasks {tasks} and --task-weights {task_weights} name different tasks; give only "
                             "--task-weights (it chooses the tasks) or make them agree")
    if not weights:
        raise ValueError(f"{option} {value!r} names no task; tasks are {', '.join(templates.TASKS)}")
    unsupported = [task for task, weight in weights.items() if weight > 0 and task not in supported]
    if unsupported:
        raise ValueError(f"{option} {value}: {data} does not support {', '.join(unsupported)} (its manifest lists "
                         f"{', '.join(supported)}); drop it, or prepare data with review text for explanation")
    return {task: float(weights[task]) for task in templates.TASKS if weights.get(task, 0) > 0}


def _check_names(option: str, value: str, names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in templates.TASKS]
    if unknown:
        raise ValueError(f"{option} {value}: unknown task {unknown[0]!r}; tasks are {', '.join(templates.TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{option} {value}: a task is named twice")


def _parse_pairs(value: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        task, sep, number = entry.partition("=")
        try:
            weight = float(number) if sep else math.nan
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ValueError(f"--task-weights {value}: {entry!r} is not TASK=WEIGHT with a number, e.g. "
                             "sequential=1,topn=1,explanation=0.5")
        if weight < 0:
            raise ValueError(f"--task-weights {value}: weight of {task.strip()!r} is negative ({weight:g}); "
                             "weights must be >= 0")
        weights[task.strip()] = weight
    _check_names("--task-weights", value, [entry.partition("=")[0].strip() for entry in entries])
    if entries and sum(weights.values()) <= 0:
        raise ValueError(f"--task-weights {value}: the weights sum to 0; give at least one task a positive weight")
    return weights


class TaskSchedule:
    """The task of each optimizer step: a pure function of (seed, weights, step); see the module docstring."""

    def __init__(self, weights: Mapping[str, float], seed: int):
        self.weights, self.tasks = dict(weights), list(weights)
        total = sum(weights.values())
        self.bounds, running = [], 0.0
        for task in self.tasks:
            running += weights[task] / total
            self.bounds.append(running)
        self.offset = math.fmod(seed * _GOLDEN * _GOLDEN, 1.0)

    def task(self, step: int) -> str:
        u = math.fmod(self.offset + step * _GOLDEN, 1.0)
        return next((t for t, bound in zip(self.tasks, self.bounds) if u < bound), self.tasks[-1])


class Position:
    """How far the stream has gone: optimizer steps done, micro-steps into the next, (epoch, global batch) per source."""

    def __init__(self, sources: Sequence[str], grad_accum: int):
        self.steps, self.micro_step, self.grad_accum = 0, 0, grad_accum
        self.sources = {name: [0, 0] for name in sources}

    @property
    def micro_batches(self) -> int:
        """This rank's micro-batches handed out: the index the loader workers split on."""
        return self.steps * self.grad_accum + self.micro_step

    def advance(self, source: str, global_batches_per_epoch: int) -> None:
        self.micro_step += 1
        if self.micro_step < self.grad_accum:
            return
        self.steps, self.micro_step = self.steps + 1, 0
        epoch, batch = self.sources[source]
        self.sources[source] = [epoch, batch + 1] if batch + 1 < global_batches_per_epoch else [epoch + 1, 0]


class TaskBatches(IterableDataset):
    """Endless ``(task, model batch)`` pairs of this rank from ``position`` on, split over loader workers."""

    def __init__(self, sources: Mapping[str, ShardStream], schedule: TaskSchedule, batcher: TaskBatcher):
        self.sources, self.schedule, self.batcher = dict(sources), schedule, batcher
        self.grad_accum = next(iter(self.sources.values())).grad_accum  # task_stream gives all sources one layout
        self.position = Position(list(self.sources), self.grad_accum)

    def next_source(self, position: Position) -> tuple[str, str]:
        task = self.schedule.task(position.steps)
        return task, SOURCE_OF[task]

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        position = copy.deepcopy(self.position)
        start = position.micro_batches
        while True:
            task, source = self.next_source(position)
            stream = self.sources[source]
            if (position.micro_batches - start) % workers == worker:
                epoch, global_batch = position.sources[source]
                table = stream.read_batch(epoch, global_batch * self.grad_accum + position.micro_step)
                # its place in the global sequence: the same rows get the same negatives on any rank count
                place = position.steps * stream.global_batch_size + stream.first_row(position.micro_step)
                batch = self.batcher.encode_columns(table.to_pydict(), task, step=place)
                yield task, {name: tensor.numpy() for name, tensor in batch.items()}
            position.advance(source, stream.global_batches_per_epoch)


def _as_is(item):
    return item


class TaskStream:
    """The trainer's iterator over ready batches, with a position that survives restarts: ``state_dict()``.

    The state is world-size free; ``load_state_dict`` accepts it on any number of ranks that keeps the
    global batch (reader.check_resumable says what changed otherwise). A state written before the
    global-batch stream (per-rank ``batch_size`` / ``world_size`` keys, no ``global_batch_size``) is
    refused with a message: its ranks' contiguous ranges cannot be continued without a skip or repeat.
    """

    def __init__(self, dataset: TaskBatches, num_workers: int = 1):
        self.dataset, self.num_workers = dataset, num_workers
        self.position = Position(list(dataset.sources), dataset.grad_accum)

    def _layout(self) -> dict:
        sources = self.dataset.sources
        return {**next(iter(sources.values())).layout(), "files": {name: s.fingerprint for name, s in sources.items()},
                "task_weights": self.dataset.schedule.weights}

    def state_dict(self) -> dict:
        sources = {name: {"epoch": e, "global_batch": b} for name, (e, b) in self.position.sources.items()}
        return {"global_steps": self.position.steps, "micro_step": self.position.micro_step,
                "micro_batches": self.position.micro_batches, "sources": sources, **self._layout()}

    def load_state_dict(self, state: dict) -> None:
        check_resumable(state, self._layout(), {**SAME_ON_RESUME, "task_weights": "--task-weights"})
        if set(state["sources"]) != set(self.position.sources):
            raise ValueError(f"cannot resume the data stream: it read {', '.join(state['sources'])}, now "
                             f"{', '.join(self.position.sources)}; resume with the same --task-weights")
        self.position.steps, self.position.micro_step = state["global_steps"], state["micro_step"]
        for name in self.position.sources:
            self.position.sources[name] = [state["sources"][name]["epoch"], state["sources"][name]["global_batch"]]

    def __iter__(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        self.dataset.position = copy.deepcopy(self.position)
        # its own generator: creating the loader must not draw from the global RNG (dropout), or a resumed
        # run would continue with other random numbers than the uninterrupted one
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_as_is,
                            generator=torch.Generator().manual_seed(0))
        for task, batch in loader:
            expected, source = self.dataset.next_source(self.position)
            assert task == expected, (task, expected)  # workers and the main process walk the same schedule
            self.position.advance(source, self.dataset.sources[source].global_batches_per_epoch)
            yield task, {name: torch.from_numpy(array) for name, array in batch.items()}
