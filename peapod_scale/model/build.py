"""Build the PeaPOD model the training config asks for: a preset with random weights or a pretrained T5."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from transformers import T5ForConditionalGeneration

from peapod_scale.config import TrainConfig
from peapod_scale.data.user_similarity import read_neighbors, read_user_embeddings

from .peapod import PeaPOD, PeaPODConfig
from .presets import untie_lm_head
from .zero import writable


def prompt_config(cfg: TrainConfig, num_users: int) -> PeaPODConfig:
    return PeaPODConfig(
        num_users=num_users, user_prompt=cfg.user_prompt, pool_size=cfg.pool_size, prompt_length=cfg.prompt_length,
        gate_heads=cfg.gate_heads, tau=cfg.tau, user_dim=cfg.user_dim, key_dim=cfg.user_dim,
        task_prompt_length=cfg.task_prompt_length, compose_backend=cfg.compose,
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


def engine_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed keeps the module's parameters in for this config."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def _dataset_manifest(cfg: TrainConfig) -> dict:
    return json.loads((Path(cfg.data) / "manifest.json").read_text())


def _construction_context(ds_config: dict | None):
    """``deepspeed.zero.Init`` under ZeRO-3: every parameter is partitioned over the ranks as its module
    is built, so no rank ever holds a whole flan-t5-xxl. Otherwise an ordinary construction."""
    if ds_config is None or int(ds_config.get("zero_optimization", {}).get("stage", 0)) != 3:
        return contextlib.nullcontext()
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
        vectors = torch.from_numpy(read_user_embeddings(cfg.data, _dataset_manifest(cfg)))
        table = prompt.users.weight
        if vectors.shape[1] != prompt.users.embedding_dim or vectors.shape[0] != prompt.users.num_embeddings - 1:
            raise ValueError(f"--user-init mf: the dataset's user embeddings are {tuple(vectors.shape)} but the model "
                             f"has {prompt.users.num_embeddings - 1} users of width {prompt.users.embedding_dim}; "
                             "set --user-dim to prepare's --mf-dim")
        with writable(table), torch.no_grad():
            table[1:] = vectors.to(table.dtype)


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


def no_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameters kept out of weight decay, as Hugging Face's Trainer does: biases and norm weights.

    Decaying a norm's gain pulls it towards 0, which rescales the layer's whole output; decay is meant
    for the matrices."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or "LayerNorm" in type(module).__name__
        for name, _ in module.named_parameters(recurse=False):
            if is_norm or name == "bias":
                names.add(f"{module_name}.{name}" if module_name else name)
    return names


def optimizer_groups(model: PeaPOD, lr: float, embedding_lr_scale: float, backbone_is_random: bool) -> list[dict]:
    """Parameter groups: embedding tables that start random learn ``embedding_lr_scale`` times faster, and
    biases and norm weights get no weight decay (the others the DeepSpeed config's).

    Adam moves a weight by about ``lr`` per update, but a row of an embedding table is only updated
    when its id occurs in a batch, and T5 initialises embeddings with std 1.0: at the body's learning
    rate, user rows (a few hundred updates an epoch) barely leave their random start. Pretrained token
    embeddings keep the body's rate.
    """
    fast_names = {"user_prompt.users.weight"} | ({"t5.shared.weight"} if backbone_is_random else set())
    no_decay = no_decay_names(model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    body = [p for n, p in trainable if n not in fast_names and n not in no_decay]
    body_no_decay = [p for n, p in trainable if n not in fast_names and n in no_decay]
    fast = [p for n, p in trainable if n in fast_names]
    groups = [{"params": body, "lr": lr}]
    if body_no_decay:
        groups.append({"params": body_no_decay, "lr": lr, "weight_decay": 0.0})
    if fast:
        groups.append({"params": fast, "lr": lr * embedding_lr_scale})
    return groups
