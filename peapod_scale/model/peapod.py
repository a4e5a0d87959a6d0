"""PeaPOD: ``[task prompt ; user prompt ; token + whole-word embeddings]`` into a T5 encoder-decoder."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from peapod_scale.data.templates import TASKS
from peapod_scale.model.presets import new_backbone, preset_config, untie_lm_head
from peapod_scale.model.user_prompt import NeighborUserPrompt, PoolUserPrompt
from peapod_scale.model.zero import gathered, writable

CONFIG_FILE = "peapod_config.json"
PROMPT_WEIGHTS_FILE = "peapod_prompts.safetensors"
BACKBONE_DIR = "backbone"


@dataclass
class PeaPODConfig:
    """Every hyperparameter of the prompt side; the backbone keeps its own T5Config."""

    num_users: int
    user_prompt: str = "pool"  # pool | neighbors (PeaPOD v2) | none (POD: task prompts only)
    num_neighbors: int = 20  # neighbors: the width of the lists prepare wrote
    pool_size: int = 32
    prompt_length: int = 3
    gate_heads: int = 4
    tau: float = 1.0
    user_dim: int = 64
    key_dim: int = 64
    task_prompt_length: int = 3
    num_tasks: int = len(TASKS)
    max_whole_words: int = 512
    compose_backend: str = "auto"
    user_table: str = "dense"  # sharded: the user rows live outside the model (model/user_table.py)

    def __post_init__(self):
        if self.user_prompt not in ("pool", "neighbors", "none"):
            raise ValueError(f"--user-prompt must be pool, neighbors or none, got {self.user_prompt!r}")
        if self.user_table not in ("dense", "sharded"):
            raise ValueError(f"user_table must be dense or sharded, got {self.user_table!r}")
        if self.user_table == "sharded" and self.user_prompt != "pool":
            raise ValueError(f"--user-table sharded serves --user-prompt pool; --user-prompt {self.user_prompt} "
                             "keeps the dense table (--user-table dense)")

    @property
    def prompt_tokens(self) -> int:
        return self.task_prompt_length + (self.prompt_length if self.user_prompt != "none" else 0)


def _token_embedding_std(backbone: T5ForConditionalGeneration) -> float:
    """Scale for the new prompt parameters: the token embeddings' std.

    A ZeRO-3 partitioned weight is gathered for the read (every rank takes part), so the prompts start
    the same with and without ZeRO-3; a meta weight holds no values: then use the std T5 initialises
    its embeddings with (the initializer factor).
    """
    weight = backbone.get_input_embeddings().weight
    if weight.is_meta:
        return float(backbone.config.initializer_factor)
    with gathered(weight):
        return float(weight.detach().float().std())


class PeaPOD(nn.Module):
    def __init__(self, config: PeaPODConfig, backbone: T5ForConditionalGeneration):
        super().__init__()
        self.config = config
        self.t5 = backbone
        d_model = backbone.config.d_model
        embed_std = _token_embedding_std(backbone)
        self.task_prompts = nn.Parameter(torch.randn(config.num_tasks, config.task_prompt_length, d_model) * embed_std)
        self.whole_word = nn.Embedding(config.max_whole_words, d_model)
        with writable(self.whole_word.weight), torch.no_grad():
            nn.init.normal_(self.whole_word.weight, std=embed_std * 0.1)
        self.user_prompt = None
        if config.user_prompt == "pool":
            self.user_prompt = PoolUserPrompt(
                config.num_users, d_model, config.pool_size, config.prompt_length, config.gate_heads,
                config.user_dim, config.key_dim, config.tau, config.compose_backend, config.user_table,
            )
            with writable(self.user_prompt.pool), torch.no_grad():
                self.user_prompt.pool.mul_(embed_std)
        elif config.user_prompt == "neighbors":
            self.user_prompt = NeighborUserPrompt(
                config.num_users, config.num_neighbors, d_model, config.prompt_length, config.gate_heads,
                config.user_dim, config.key_dim, config.tau, config.compose_backend,
            )
            # Linear's init gives values of std 1/sqrt(3) from N(0, 1) users: rescale to the embeddings' std.
            with writable(self.user_prompt.value.weight), torch.no_grad():
                self.user_prompt.value.weight.mul_(embed_std * math.sqrt(3))

    @classmethod
    def from_preset(cls, arch: str, vocab_size: int, config: PeaPODConfig, dropout_rate: float = 0.1) -> "PeaPOD":
        return cls(config, new_backbone(preset_config(arch, vocab_size, dropout_rate)))

    def encoder_inputs(self, input_ids, attention_mask, whole_word_ids, user_ids, task_ids):
        """Prompt-extended ``inputs_embeds`` and attention mask for the encoder."""
        tokens = self.t5.get_input_embeddings()(input_ids) + self.whole_word(whole_word_ids)
        parts = [self.task_prompts[task_ids].to(tokens.dtype)]
        if self.user_prompt is not None:
            parts.append(self.user_prompt(user_ids).to(tokens.dtype))
        prompt_mask = attention_mask.new_ones(input_ids.shape[0], self.config.prompt_tokens)
        return torch.cat(parts + [tokens], dim=1), torch.cat([prompt_mask, attention_mask], dim=1)

    def forward(self, input_ids, attention_mask, whole_word_ids, user_ids, task_ids, labels=None):
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, whole_word_ids, user_ids, task_ids)
        return self.t5(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, whole_word_ids, user_ids, task_ids, constraint=None,
                 **generate_kwargs):
        """Beam search etc. from the prompt-extended encoder input; ``constraint`` (a ``prefix_allowed_tokens_fn``,
        e.g. ``constraints.PrefixConstraint``) restricts the output to valid answers."""
        if constraint is not None:
            generate_kwargs["prefix_allowed_tokens_fn"] = constraint
        # Outside forward() no ZeRO-3 hook gathers PeaPOD's own parameter (submodules gather themselves);
        # a collective: under ZeRO-3 every rank generates in lock-step (eval/evaluate.py).
        with gathered(self.task_prompts):
            embeds, mask = self.encoder_inputs(input_ids, attention_mask, whole_word_ids, user_ids, task_ids)
        encoded = self.t5.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        return self.t5.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state),
            attention_mask=mask, **generate_kwargs,
        )

    # -- save / load ---------------------------------------------------------------------------
    def prompt_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        state_dict = self.state_dict() if state_dict is None else state_dict
        return {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if not k.startswith("t5.")}

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Backbone in Hugging Face format, prompt parameters as safetensors, config as JSON.

        ``state_dict`` lets a ZeRO-3 caller pass the gathered full weights.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        backbone_state = {k[len("t5."):]: v for k, v in state_dict.items() if k.startswith("t5.")}
        self.t5.save_pretrained(directory / BACKBONE_DIR, state_dict=backbone_state)
        save_file(self.prompt_state_dict(state_dict), str(directory / PROMPT_WEIGHTS_FILE))
        # a sharded table is saved whole (the caller gathers it into state_dict): the folder is a dense model
        config = dataclasses.replace(self.config, user_table="dense")
        (directory / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32, **overrides) -> "PeaPOD":
        """Every parameter (backbone and prompts) in one ``dtype``: fp32 by default, whatever dtype the
        backbone's config names (transformers 5 would otherwise load a bf16-trained backbone as bf16
        beside fp32 prompt parameters)."""
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: is {directory} a folder written by PeaPOD.save_pretrained?")
        config = PeaPODConfig(**{**json.loads(config_path.read_text()), **overrides})
        backbone = untie_lm_head(T5ForConditionalGeneration.from_pretrained(directory / BACKBONE_DIR, dtype=dtype),
                                 keep_values=True)
        model = cls(config, backbone)
        missing, unexpected = model.load_state_dict(load_file(str(directory / PROMPT_WEIGHTS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith("t5.")]
        if missing or unexpected:
            raise ValueError(f"{directory / PROMPT_WEIGHTS_FILE}: missing {missing}, unexpected {unexpected}")
        return model.to(dtype)

    @staticmethod
    def backbone_dtype_on_disk(directory: str | Path) -> torch.dtype:
        """The dtype the saved backbone's config names (what the run trained its weights in)."""
        backbone_config = json.loads((Path(directory) / BACKBONE_DIR / "config.json").read_text())
        name = backbone_config.get("dtype") or backbone_config.get("torch_dtype") or "float32"
        return getattr(torch, name) if isinstance(getattr(torch, name, None), torch.dtype) else torch.float32
