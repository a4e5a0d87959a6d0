"""Build the PeaPOD model the training config asks for: a preset with random weights or a pretrained T5."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from transformers import T5ForConditionalGeneration

from peapod_scale.config.train import TrainConfig
from peapod_scale.data.prepare.user_similarity import read_neighbors, read_user_embeddings
from peapod_scale.distributed.ds_config import engine_dtype
from peapod_scale.model.peapod import PeaPOD, PeaPODConfig
from peapod_scale.model.presets import untie_lm_head
from peapod_scale.model.zero import writable


def prompt_config(cfg: TrainConfig, num_users: int) -> PeaPODConfig:
    return PeaPODConfig(
        num_users=num_users, user_prompt=cfg.user_prompt, pool_size=cfg.pool_size, prompt_length=cfg.prompt_length,
        gate_heads=cfg.gate_heads, tau=cfg.tau, user_dim=cfg.user_dim, key_dim=cfg.user_dim,
        task_prompt_length=cfg.task_prompt_length, compose_backend=cfg.compose, user_table=cfg.user_table,
    )


def load_backbone(name_or_dir: str) -> T5ForConditionalGeneration:
    try:
        backbone = T5ForConditionalGeneration.from_pretrained(name_or_dir)
    except OSError as error:
        raise OSError(f"cannot load the T5 model {name_or_dir!r} ({error}). Without network access, download it elsewhere "
                      "and pass the local folder to --model.") from None
    return untie_lm_head(backbone, keep_values=True)  # Flan-T5 keeps its own lm_head (see presets.py)


def freeze_backbone(model: PeaPOD) -> PeaPOD:
    """``--train prompts``: only PeaPOD's own parameters learn (task prompts, whole-word embedding, user prompt).

    The T5 weights get ``requires_grad=False``, so ``optimizer_groups`` leaves them out and no optimizer
    state is kept for them: prompt distillation of a large frozen backbone costs little memory.
    """
    for parameter in model.t5.parameters():
        parameter.requires_grad_(False)
    return model


def _dataset_manifest(cfg: TrainConfig) -> dict:
    return json.loads((Path(cfg.data) / "manifest.json").read_text())


def _construction_context(ds_config: dict | None):
    """``deepspeed.zero.Init`` under ZeRO-3: every parameter is partitioned over the ranks as its module
    is built, so no rank ever holds a whole flan-t5-xxl. Otherwise an ordinary construction."""
    if ds_config is None or int(ds_config.get("zero_optimization", {}).get("stage", 0)) != 3:
        return contextlib.nullcontext()
    # lazy: deepspeed is needed to train and to read ZeRO checkpoints, not to evaluate or recommend
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=ds_config)


def load_user_side(model: PeaPOD, cfg: TrainConfig, neighbors=None) -> None:
    """Neighbour lists into the buffer; with ``--user-init mf`` the MF user embeddings into the table."""
    prompt = model.user_prompt
    if neighbors is not None:
        prompt.neighbors[1:] = torch.from_numpy(neighbors)
    if cfg.user_init == "mf":
        if prompt is None:
            raise ValueError("--user-init mf needs a user prompt (--user-prompt pool or neighbors)")
        if prompt.users is None:
            return  # a sharded table: the trainer copies the rows into it (mf_user_rows)
        vectors = torch.from_numpy(read_user_embeddings(cfg.data, _dataset_manifest(cfg)))
        table = prompt.users.weight
        if vectors.shape[1] != prompt.users.embedding_dim or vectors.shape[0] != prompt.users.num_embeddings - 1:
            raise ValueError(f"--user-init mf: the dataset's user embeddings are {tuple(vectors.shape)} but the model "
                             f"has {prompt.users.num_embeddings - 1} users of width {prompt.users.embedding_dim}; "
                             "set --user-dim to prepare's --mf-dim")
        with writable(table), torch.no_grad():
            table[1:] = vectors.to(table.dtype)


def mf_user_rows(cfg: TrainConfig, num_users: int) -> torch.Tensor:
    """``[num_users + 1, user_dim]``: prepare's MF embeddings behind an unused row 0, for a sharded table."""
    vectors = torch.from_numpy(read_user_embeddings(cfg.data, _dataset_manifest(cfg)))
    if vectors.shape != (num_users, cfg.user_dim):
        raise ValueError(f"--user-init mf: the dataset's user embeddings are {tuple(vectors.shape)} but the model has "
                         f"{num_users} users of width {cfg.user_dim}; set --user-dim to prepare's --mf-dim")
    return torch.cat([torch.zeros(1, cfg.user_dim), vectors.float()])


def build_model(cfg: TrainConfig, num_users: int, vocab_size: int, ds_config: dict | None = None) -> PeaPOD:
    """The model ``cfg`` asks for; ``ds_config`` (the resolved DeepSpeed dict) turns on ZeRO-3 construction."""
    prompts = prompt_config(cfg, num_users)
    neighbors = None
    if prompts.user_prompt == "neighbors":
        neighbors = read_neighbors(cfg.data, _dataset_manifest(cfg))
        if neighbors.shape[0] != num_users:
            raise ValueError(f"{cfg.data}: neighbour lists for {neighbors.shape[0]} users, the dataset has {num_users}")
        prompts.num_neighbors = neighbors.shape[1]
    # A pretrained backbone loads outside zero.Init (from_pretrained would fill empty placeholders without
    # Hugging Face's own DeepSpeed integration); deepspeed.initialize partitions it afterwards. It must
    # then have the dtype zero.Init gives the prompt parameters: ZeRO-3 keeps one flat dtype per partition.
    backbone = load_backbone(cfg.model) if cfg.model else None
    if backbone is not None and ds_config is not None and int(ds_config.get("zero_optimization", {}).get("stage", 0)) == 3:
        backbone = backbone.to(engine_dtype(ds_config))
    with _construction_context(ds_config):
        if backbone is not None:
            model = PeaPOD(prompts, backbone)
        else:
            model = PeaPOD.from_preset(cfg.arch, vocab_size, prompts, dropout_rate=cfg.dropout)
    load_user_side(model, cfg, neighbors)
    return freeze_backbone(model) if cfg.train == "prompts" else model
