"""Checkpoints that are complete or invisible: save, list, validate, prune, choose one to resume, convert.

Layout of ``RUN/checkpoints``::

    step300/                      one complete checkpoint (DeepSpeed's files + ours)
        mp_rank_00_model_states.pt, *optim_states.pt ...   DeepSpeed's, one set per rank
        rng_rank00000.pt ...      every rank's RNG states (DeepSpeed keeps only rank 0's client state)
        user_table_rank00000.safetensors ...   with --user-table sharded: every rank's rows and accumulators
        peapod_checkpoint.json    written last: step, world size, config, dataset fingerprint, stream
                                  position, validation tracker, and every file's size
        universal/                (cache) the same checkpoint for another number of ranks
    best-step200/                 the best validated checkpoint, kept apart from --keep-last
    latest                        the tag DeepSpeed (and ``export``) loads by default

Why the dance in ``Checkpointer.save``: DeepSpeed writes every rank's shards straight into the final
tag folder and rank 0 then writes ``latest`` with no barrier, so a crash (or a slower rank) can leave
``latest`` naming a tag whose other shards do not exist yet. Here every rank writes under a temporary
tag, all ranks meet at a barrier, rank 0 flushes the files to disk, records their sizes in
``peapod_checkpoint.json``, renames the folder to its final tag and only then replaces ``latest``
(temporary file + ``os.replace``). A kill at any moment leaves the previous checkpoint and ``latest``
usable; a tag folder with its final name is complete by construction, and the recorded sizes catch
what can still go wrong afterwards (a truncated copy, a lost shard).

DeepSpeed reads its files with ``torch.load(weights_only=False)``, i.e. an unpickler that can run any
code a file names. Before any checkpoint is loaded (ours or a user's), every ``*.pt`` is scanned with
``torch.serialization.get_unsafe_globals_in_checkpoint``, which reads the pickle opcodes without
executing them; only tensors, containers and DeepSpeed's few plain records pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)

from peapod_scale.config.train import MUST_MATCH, PER_ATTEMPT, resume_rule
from peapod_scale.tools.atomic_files import fsync_path, replace_folder, write_json_atomic, write_text_atomic
from peapod_scale.tools.run_dir import RunDir

META_FILE = "peapod_checkpoint.json"
FORMAT_VERSION = 1
UNIVERSAL = "universal"  # the cached universal checkpoint, inside its tag folder
_STEP_TAG = re.compile(r"step(\d+)")
_TEMPORARY_PREFIX = ".tmp-"

# What DeepSpeed 0.19 ZeRO checkpoints hold beyond tensors and containers: plain value records.
DEEPSPEED_RECORDS = frozenset({
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
})


class UnsafeCheckpoint(ValueError):
    """A checkpoint file whose unpickling would import code: refused, never skipped quietly."""


# -- the pickle scanner -------------------------------------------------------------------------------------------

def unreadable_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a torch checkpoint (None: it can); raises UnsafeCheckpoint for code."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which one
        return f"{path}: not a readable torch checkpoint ({error})"
    unsafe = sorted(set(found) - DEEPSPEED_RECORDS)
    if unsafe:
        raise UnsafeCheckpoint(f"{path}: refusing to load it: unpickling would import {', '.join(unsafe)}, and "
                               "DeepSpeed unpickles without restrictions. Only tensors, containers and DeepSpeed's "
                               "own records are accepted; use a checkpoint written by `peapod-scale train`.")
    return None


def verify_checkpoint(tag_dir: str | Path, recursive: bool = False) -> None:
    """Raise if any ``*.pt`` in ``tag_dir`` is unreadable (ValueError) or would run code (UnsafeCheckpoint)."""
    tag_dir = Path(tag_dir)
    files = sorted(tag_dir.rglob("*.pt") if recursive else tag_dir.glob("*.pt"))
    if not files:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed checkpoint files (*.pt) in it")
    for path in files:
        problem = unreadable_file(path)
        if problem:
            raise ValueError(problem)


# -- what a checkpoint was trained on ------------------------------------------------------------------------------

def dataset_fingerprint(manifest: dict, vocab_size: int) -> dict:
    """Counts a model's shapes depend on, and a digest of the dataset (its manifest, where files are moved)."""
    content = {key: value for key, value in manifest.items() if key not in ("created_by", "inputs")}
    content["inputs"] = [{"bytes": i.get("bytes"), "sha256": i.get("sha256")} for i in manifest.get("inputs", [])]
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return {"users": manifest["counts"]["users"], "items": manifest["counts"]["items"], "vocab_size": vocab_size,
            "dataset": digest}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def compare_run(meta: dict, config: dict, fingerprint: dict, zero_stage: int, precision: str,
                where: str) -> list[str]:
    """Refuse (ValueError naming the field and both values) what cannot continue; list what may change."""
    saved = meta["dataset"]
    for key in ("users", "items", "vocab_size", "dataset"):
        if saved.get(key) != fingerprint[key]:
            what = {"vocab_size": "vocabulary size", "dataset": "dataset digest"}.get(key, f"{key} count")
            raise ValueError(f"--resume {where}: the checkpoint was trained on other data: {what} "
                             f"{saved.get(key)} in the checkpoint, {fingerprint[key]} in --data {config['data']}")
    for name, old, new in (("ZeRO stage", meta["zero_stage"], zero_stage), ("precision", meta["precision"], precision)):
        if old != new:
            raise ValueError(f"--resume {where}: the checkpoint was trained with {name} {old}, this run has {new}; "
                             "resume with the same DeepSpeed config and --precision")
    changed = []
    for key in sorted(set(meta["config"]) & set(config)):
        old, new = meta["config"][key], config[key]
        if resume_rule(key) == PER_ATTEMPT or old == new:
            continue
        if resume_rule(key) == MUST_MATCH:
            raise ValueError(f"--resume {where}: the checkpoint was trained with {_flag(key)} {old}, this run has "
                             f"{_flag(key)} {new}; resume with the same value or start a new run in another --output")
        changed.append(f"{_flag(key)} {old} -> {new}")
    return changed


# -- RNG states -----------------------------------------------------------------------------------------------------

def shard_pattern() -> str:
    """The files of a sharded user table in a checkpoint, one per rank (model/user_table.py names them)."""
    return "user_table_rank*.safetensors"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


def rng_state(with_cuda: bool) -> dict:
    """This process's RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if with_cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_rng(seed: int, rank: int, step: int) -> None:
    """For a rank the checkpoint had no RNG file for (it was written by fewer ranks): seeded, reproducible."""
    random.seed(f"{seed}-{rank}-{step}")
    np.random.seed([seed, rank, step])
    torch.manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def load_rng(tag_dir: Path, rank: int) -> dict | None:
    path = tag_dir / rng_file(rank)
    return torch.load(path, weights_only=True) if path.is_file() else None


# -- listing and validating -----------------------------------------------------------------------------------------

def step_of(tag: str) -> int | None:
    match = _STEP_TAG.fullmatch(tag)
    return int(match.group(1)) if match else None


def step_tags(folder: Path) -> list[Path]:
    """The periodic checkpoints ``stepN`` in ``folder``, newest first (temporary and best ones excluded)."""
    if not folder.is_dir():
        return []
    tags = [p for p in folder.iterdir() if p.is_dir() and step_of(p.name) is not None]
    return sorted(tags, key=lambda p: step_of(p.name), reverse=True)


def read_meta(tag_dir: Path) -> dict:
    return json.loads((tag_dir / META_FILE).read_text())


def checkpoint_problem(tag_dir: Path) -> str | None:
    """Why ``tag_dir`` is not a complete checkpoint (None if it is); UnsafeCheckpoint for a file with code."""
    meta_path = tag_dir / META_FILE
    if not meta_path.is_file():
        return f"{meta_path} is missing (the save did not complete, or the checkpoint predates this format)"
    try:
        meta = read_meta(tag_dir)
        files = meta["files"]
    except (ValueError, KeyError) as error:
        return f"{meta_path}: unreadable ({error})"
    for name, size in sorted(files.items()):
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing (a rank's shard of {meta.get('world_size')} ranks)"
        problem = unreadable_file(path) if name.endswith(".pt") else None  # code in it raises, even if resized
        if problem:
            return problem
        actual = path.stat().st_size
        if actual != size:
            return f"{path} is truncated or altered: {actual} bytes, {size} when saved"
    return None


# -- choosing the checkpoint to resume ------------------------------------------------------------------------------

@dataclass
class ResumePoint:
    tag_dir: Path
    meta: dict
    skipped: list[str] = field(default_factory=list)  # warnings: newer checkpoints that were not complete


def _newest_complete(folder: Path, where: str) -> ResumePoint | None:
    skipped = []
    for tag_dir in step_tags(folder):
        problem = checkpoint_problem(tag_dir)
        if problem is None:
            return ResumePoint(tag_dir, read_meta(tag_dir), skipped)
        skipped.append(f"skipping checkpoint {tag_dir.name}: {problem}")
    if skipped:
        raise ValueError(f"--resume {where}: no complete checkpoint in {folder}: " + "; ".join(skipped)
                         + ". Remove them, or start again with --resume none --overwrite")
    return None


def find_resume(resume: str, run_dir: Path, overwrite: bool) -> ResumePoint | None:
    """``--resume auto`` (newest complete checkpoint of RUN, or None), ``none`` (None) or a path."""
    own = RunDir(run_dir).checkpoints
    if resume == "none":
        existing = step_tags(own)
        if existing and not overwrite:
            raise ValueError(f"--resume none: {own} already holds checkpoints ({', '.join(p.name for p in existing[:3])}"
                             f"{', ...' if len(existing) > 3 else ''}); continue it with --resume auto, or give "
                             "--overwrite to delete the run's checkpoints and start again")
        return None
    if resume == "auto":
        return _newest_complete(own, resume)
    where = Path(resume)
    if (where / META_FILE).is_file() or any(where.glob("*model_states.pt")):
        problem = checkpoint_problem(where)
        if problem:
            raise ValueError(f"--resume {resume}: {problem}")
        newer = [p.name for p in step_tags(where.parent) if step_of(p.name) > read_meta(where)["step"]]
        if where.parent.resolve() == own.resolve() and newer:
            raise ValueError(f"--resume {resume}: {own} also holds newer checkpoints ({', '.join(newer)}) that this "
                             "continuation would be mixed up with; move them away or continue the newest (--resume auto)")
        return ResumePoint(where, read_meta(where))
    for folder in (where, RunDir(where).checkpoints):
        if step_tags(folder):
            return _newest_complete(folder, resume)
    raise ValueError(f"--resume {resume}: not a checkpoints folder, a run folder or a checkpoint tag folder "
                     "(none of them holds a stepN checkpoint); point it at RUN, RUN/checkpoints or RUN/checkpoints/stepN")


def clear_run(run_dir: Path) -> None:
    """``--resume none --overwrite``: remove what an earlier training wrote into the run folder."""
    for path in RunDir(run_dir).written_by_training():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


# -- loading --------------------------------------------------------------------------------------------------------

def needs_universal(meta: dict, world_size: int) -> bool:
    """A ZeRO checkpoint partitions the optimizer over its ranks: another rank count loads the universal form."""
    return meta["world_size"] != world_size and meta["zero_stage"] > 0


def convert_to_universal(tag_dir: Path, log) -> Path:
    """The universal form of ``tag_dir`` (DeepSpeed's ds_to_universal), converted once and cached beside it.

    Run on one rank while the others wait. The conversion runs in a temporary folder and is renamed into
    the tag folder when complete, so a kill during it leaves no half cache.
    """
    target = tag_dir / UNIVERSAL
    if target.is_dir():
        return target
    work = tag_dir.parent / f"{_TEMPORARY_PREFIX}universal-{tag_dir.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    workers = max(1, min(4, (os.cpu_count() or 1) // 2))
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
               "--output_folder", str(work / UNIVERSAL), "--num_extract_workers", str(workers),
               "--num_merge_workers", str(max(1, workers // 2))]
    log(f"converting {tag_dir} (written by {read_meta(tag_dir)['world_size']} rank(s)) to a universal checkpoint")
    # its own session: a SIGTERM to the rank's process group (a preemption) must not kill the conversion;
    # the rank records it and stops after its first step
    done = subprocess.run(command, capture_output=True, text=True, start_new_session=True)
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        raise ValueError(f"{tag_dir}: DeepSpeed's universal checkpoint conversion failed: {' / '.join(tail)}")
    os.rename(work / UNIVERSAL, target)
    fsync_path(tag_dir)
    shutil.rmtree(work, ignore_errors=True)
    return target


def load_engine_state(engine, tag_dir: Path, universal: bool) -> None:
    """Weights, optimizer, scheduler and counters from ``tag_dir`` (its universal form for another rank count).

    The universal loader is what ``"checkpoint": {"load_universal": true}`` in the DeepSpeed config
    selects; DeepSpeed reads that setting only inside ``load_checkpoint``, so it is set per load here
    (one run may load a universal checkpoint at start and a same-size best checkpoint at its end).
    """
    engine._config.load_universal_checkpoint = universal
    stage3 = universal and engine.zero_optimization_partition_weights()
    groups = _group_settings(engine.optimizer.optimizer) if stage3 else None
    load_dir, tag = (tag_dir, UNIVERSAL) if universal else (tag_dir.parent, tag_dir.name)
    loaded, _ = engine.load_checkpoint(str(load_dir), tag=tag)
    if loaded is None:
        raise ValueError(f"{tag_dir}: DeepSpeed could not load it")
    if groups is not None:
        _repair_zero3_universal_load(engine.optimizer, groups, engine.lr_scheduler.get_last_lr())


def _repair_zero3_universal_load(zero_optimizer, groups: list[dict], lrs: list[float]) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal loader
    (stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3), found by the 2 -> 1 / 1 -> 2 tests:

    - it copies the FIRST parameter group's settings onto every group: the no-decay group would decay and
      the embedding tables would lose their --embedding-lr-scale. Each group gets its own settings back,
      and the learning rate of the restored scheduler;
    - it gives every group's Adam state the same ``step`` tensor, which torch's AdamW then increments in
      place once per group and step: bias corrections run ahead. Each group gets its own copy.
    """
    inner = zero_optimizer.optimizer
    for group, settings, lr in zip(inner.param_groups, groups, lrs):
        group.update(settings, lr=lr)
    for flat in zero_optimizer.fp32_partitioned_groups_flat:
        state = inner.state[flat]
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _group_settings(optimizer) -> list[dict]:
    return [{key: value for key, value in group.items() if key not in ("params", "lr")} for group in optimizer.param_groups]


# -- saving ---------------------------------------------------------------------------------------------------------

def checkpoint_bytes(tag_dir: Path) -> int:
    return sum(read_meta(tag_dir)["files"].values())


def estimated_bytes(num_params: int) -> int:
    """Before the first save: fp32 weights, fp32 master copy and two Adam moments, 16 bytes a parameter."""
    return 16 * num_params


def room_problem(folder: Path, needed: int) -> str | None:
    """One line if ``folder``'s file system cannot take ``needed`` more bytes (None if it can)."""
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return None
    return (f"{folder}: not enough disk space for another checkpoint: it needs about {needed:,} bytes and "
            f"{free:,} are free; the previous checkpoint is kept intact. Free space or point --output elsewhere")


@dataclass
class Checkpointer:
    """Writes checkpoints of one run on every rank (a collective: all ranks call ``save`` together)."""

    engine: object
    collectives: object
    rank: int
    folder: Path
    keep_last: int
    num_params: int
    log: object
    with_cuda: bool = False
    write_extra: object = None  # (folder) -> None: this rank's files beside DeepSpeed's (a sharded user table)

    def needed_bytes(self) -> int:
        """The size of the newest checkpoint, or an estimate before the first."""
        tags = [t for t in step_tags(self.folder) if (t / META_FILE).is_file()]
        return checkpoint_bytes(tags[0]) if tags else estimated_bytes(self.num_params)

    def check_room(self) -> None:
        """Raise OSError (the same on every rank) when any rank's view of the folder lacks room for a save."""
        where = self.folder if self.folder.is_dir() else self.folder.parent  # before the first save
        problem = room_problem(where, self.needed_bytes())
        if self.collectives.max([1.0 if problem else 0.0])[0]:
            raise OSError(problem or f"{self.folder}: another rank has not enough disk space for a checkpoint")

    def save(self, tag: str, meta: dict, periodic: bool = True) -> Path:
        """Write checkpoint ``tag`` so that it appears complete or not at all; see the module docstring.

        A periodic one then becomes ``latest`` and older periodic ones beyond ``keep_last`` go.
        """
        final, tmp = self.folder / tag, self.folder / f"{_TEMPORARY_PREFIX}{tag}"
        self.check_room()
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        self.collectives.barrier()
        universal_info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
        # (DeepSpeed's own `latest` write is off: it has no barrier before it; the universal-checkpoint record
        # is what ds_to_universal needs to convert this checkpoint for another number of ranks)
        self.engine.save_checkpoint(str(self.folder), tag=tmp.name, client_state=universal_info, save_latest=False)
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(self.with_cuda), tmp / rng_file(self.rank))
        if self.write_extra:
            self.write_extra(tmp)
        self.collectives.barrier()  # every rank's files are written and closed
        if self.rank == 0:
            files = {}
            for path in sorted(tmp.iterdir()):
                if path.is_file():
                    fsync_path(path)
                    files[path.name] = path.stat().st_size
            write_json_atomic(tmp / META_FILE, {**meta, "format": FORMAT_VERSION, "tag": tag, "files": files,
                                                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            replace_folder(tmp, final)  # a tag saved again (a best checkpoint) is swapped whole, never edited in place
            if periodic:
                self.point_latest(tag)
                self.prune(meta["step"])
        self.collectives.barrier()  # no rank goes on (or exits) before the checkpoint is visible
        return final

    def point_latest(self, tag: str) -> None:
        """``latest`` names ``tag``: a plain file holding the tag, as DeepSpeed writes it, replaced atomically."""
        write_text_atomic(self.folder / "latest", tag)

    def prune(self, step: int) -> None:
        """Keep the newest ``keep_last`` periodic checkpoints up to ``step`` (0: all); best ones are apart.

        Tags beyond ``step`` (newer ones that were skipped as incomplete when this run resumed) are left:
        the save of that step replaces them.
        """
        if self.keep_last <= 0:
            return
        older = [t for t in step_tags(self.folder) if step_of(t.name) <= step][self.keep_last:]
        for tag_dir in older:
            doomed = self.folder / f"{_TEMPORARY_PREFIX}deleting-{tag_dir.name}"
            os.rename(tag_dir, doomed)  # gone from the listing at once, whatever happens during the removal
            shutil.rmtree(doomed, ignore_errors=True)
            self.log(f"removed checkpoint {tag_dir.name} (--keep-last {self.keep_last})")

    def remove_leftovers(self) -> None:
        """Temporary folders of saves, conversions and removals that a kill interrupted (rank 0, at start)."""
        if self.folder.is_dir():
            for path in self.folder.glob(f"{_TEMPORARY_PREFIX}*"):
                shutil.rmtree(path, ignore_errors=True)
            for path in self.folder.glob(".latest.tmp-*"):
                path.unlink(missing_ok=True)


