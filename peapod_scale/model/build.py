"""Build the PeaPOD model the training config asks for: a preset with random weights or a pretrained T5."""

from __future__ import annotations

from transformers import T5ForConditionalGeneration

from peapod_scale.config import TrainConfig

from .peapod import PeaPOD, PeaPODConfig
from .presets import untie_lm_head


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


def build_model(cfg: TrainConfig, num_users: int, vocab_size: int) -> PeaPOD:
    prompts = prompt_config(cfg, num_users)
    if cfg.model:
        model = PeaPOD(prompts, load_backbone(cfg.model))
    else:
        model = PeaPOD.from_preset(cfg.arch, vocab_size, prompts, dropout_rate=cfg.dropout)
    return freeze_backbone(model) if cfg.train == "prompts" else model


def optimizer_groups(model: PeaPOD, lr: float, embedding_lr_scale: float, backbone_is_random: bool) -> list[dict]:
    """Parameter groups: embedding tables that start random learn ``embedding_lr_scale`` times faster.

    Adam moves a weight by about ``lr`` per update, but a row of an embedding table is only updated
    when its id occurs in a batch, and T5 initialises embeddings with std 1.0: at the body's learning
    rate, user rows (a few hundred updates an epoch) barely leave their random start. Pretrained token
    embeddings keep the body's rate.
    """
    fast_names = {"user_prompt.users.weight"} | ({"t5.shared.weight"} if backbone_is_random else set())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    body = [p for n, p in trainable if n not in fast_names]
    fast = [p for n, p in trainable if n in fast_names]
    groups = [{"params": body, "lr": lr}]
    if fast:
        groups.append({"params": fast, "lr": lr * embedding_lr_scale})
    return groups
