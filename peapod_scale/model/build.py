"""Build the PeaPOD model the training config asks for: a preset with random weights or a pretrained T5."""

from __future__ import annotations

from transformers import T5ForConditionalGeneration

from peapod_scale.config import TrainConfig

from .peapod import PeaPOD, PeaPODConfig


def prompt_config(cfg: TrainConfig, num_users: int) -> PeaPODConfig:
    return PeaPODConfig(
        num_users=num_users, user_prompt=cfg.user_prompt, pool_size=cfg.pool_size, prompt_length=cfg.prompt_length,
        gate_heads=cfg.gate_heads, tau=cfg.tau, user_dim=cfg.user_dim, key_dim=cfg.user_dim,
        task_prompt_length=cfg.task_prompt_length, compose_backend=cfg.compose,
    )


def load_backbone(name_or_dir: str) -> T5ForConditionalGeneration:
    try:
        config_tied = T5ForConditionalGeneration.config_class.from_pretrained(name_or_dir).tie_word_embeddings
        backbone = T5ForConditionalGeneration.from_pretrained(name_or_dir)
    except OSError as error:
        raise OSError(f"cannot load the T5 model {name_or_dir!r} ({error}). Without network access, download it elsewhere "
                      "and pass the local folder to --model.") from None
    backbone.config.tie_word_embeddings = config_tied  # transformers 5 re-ties Flan-T5's separate lm_head otherwise
    return backbone


def build_model(cfg: TrainConfig, num_users: int, vocab_size: int) -> PeaPOD:
    prompts = prompt_config(cfg, num_users)
    if cfg.model:
        return PeaPOD(prompts, load_backbone(cfg.model))
    return PeaPOD.from_preset(cfg.arch, vocab_size, prompts, dropout_rate=cfg.dropout)
