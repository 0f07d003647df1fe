"""Exact trainable-parameter counts without weights: the model's shape, the adapted model on the meta device, rank
fitting.

Every count comes from the model that `train` builds (model.attach_adapter), instantiated on the meta device from
the model config alone: shapes without storage, so no weights are read and roberta-base is counted in a fraction
of a second. Nothing here knows a method's parameter formula; a rank is fitted by counting built models.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import TYPE_CHECKING, Callable, Optional

from .. import model as model_mod
from ..config import Config
from ..base.errors import ModelError

if TYPE_CHECKING:  # annotations only: `loraclf budget` imports torch, transformers and peft when it counts
    import torch
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel

# Published shapes of a few well-known hub models, used only when their config.json is neither reachable nor in the
# local Hugging Face cache, so that `loraclf budget` answers offline (and without the hub client's ~25 s of retries).
# Trainable counts depend only on these shapes; vocab and positions only change the model total.
_KNOWN: dict[str, Callable[[], PretrainedConfig]] = {}


def _known_configs() -> dict[str, Callable[[], PretrainedConfig]]:
    if _KNOWN:
        return _KNOWN
    from transformers import (BertConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, MPNetConfig,
                              RobertaConfig)

    roberta = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                   bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
    large = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    table = {
        "roberta-base": lambda: RobertaConfig(**roberta),
        "roberta-large": lambda: RobertaConfig(**roberta, **large),
        "bert-base-uncased": lambda: BertConfig(),
        "bert-base-cased": lambda: BertConfig(vocab_size=28996),
        "bert-large-uncased": lambda: BertConfig(**large),
        "distilbert-base-uncased": lambda: DistilBertConfig(),
        "microsoft/mpnet-base": lambda: MPNetConfig(vocab_size=30527, max_position_embeddings=514),
        "google/electra-base-discriminator": lambda: ElectraConfig(embedding_size=768, hidden_size=768,
                                                                   num_attention_heads=12, intermediate_size=3072),
        "microsoft/deberta-v3-base": lambda: DebertaV2Config(
            vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
            pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7, max_relative_positions=-1, position_biased_input=False,
            type_vocab_size=0),
    }
    for org, names in (("FacebookAI", ("roberta-base", "roberta-large")),
                       ("google-bert", ("bert-base-uncased", "bert-base-cased", "bert-large-uncased")),
                       ("distilbert", ("distilbert-base-uncased",))):
        for n in names:
            table[f"{org}/{n}"] = table[n]
    _KNOWN.update(table)
    return _KNOWN


# ------------------------------------------------------------------------------------------ the model's shape


@dataclasses.dataclass
class ModelShape:
    """A model config resolved for counting, with a note on where it came from."""

    config: PretrainedConfig
    source: str


def model_shape(cfg: Config, num_labels: int) -> ModelShape:
    """The model config for cfg.model with num_labels, from config.json, else from the built-in table above."""
    import transformers

    transformers.logging.set_verbosity_error()  # not quiet_transformers(): it imports datasets, a second of startup
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    name = cfg.model.name_or_path
    known = _known_configs().get(name)
    if known is not None:
        from transformers import AutoConfig

        try:  # the cache first: a hub lookup that cannot connect retries for ~25 s before failing
            mc = AutoConfig.from_pretrained(name, revision=cfg.model.revision, local_files_only=True,
                                            num_labels=num_labels, id2label=id2label,
                                            problem_type=cfg.model.problem_type,
                                            label2id={v: k for k, v in id2label.items()})
            return ModelShape(mc, "config.json (local Hugging Face cache)")
        except (OSError, ValueError):
            mc = known()
            mc.num_labels = num_labels
            mc.id2label, mc.label2id = id2label, {v: k for k, v in id2label.items()}
            mc.problem_type = cfg.model.problem_type
            return ModelShape(mc, f"loraclf's built-in copy of {name}'s published shape (its config.json is not in "
                                  f"the local Hugging Face cache)")
    path, mc = model_mod.load_model_config(cfg, id2label)
    return ModelShape(mc, f"{path}/config.json")


def max_rank(mc: PretrainedConfig) -> int:
    """No rank above the model width helps (a rank-r update of a d x k matrix has rank <= min(d, k))."""
    for attr in ("hidden_size", "dim", "d_model"):
        if isinstance(getattr(mc, attr, None), int):
            return int(getattr(mc, attr))
    return 4096


# ------------------------------------------------------------------------------------------ counting on meta


def trainable_count(model: torch.nn.Module) -> int:
    """The one trainable-parameter count: every parameter that gets a gradient."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _meta_base(cfg: Config, shape: ModelShape) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(
                shape.config, trust_remote_code=cfg.model.trust_remote_code)
    except (ValueError, KeyError) as e:
        raise ModelError(f"cannot build a sequence classifier from the config of '{cfg.model.name_or_path}': "
                         f"{str(e).splitlines()[0][:200]}") from None


class RankCounter:
    """Builds the adapted model on the meta device for any rank, reusing one meta base model."""

    def __init__(self, cfg: Config, shape: ModelShape):
        self.cfg, self.shape = cfg, shape
        self.base = _meta_base(cfg, shape)
        self.cache: dict[int, int] = {}
        self.models: dict[int, PeftModel] = {}

    def build(self, r: int) -> PeftModel:
        cfg = dataclasses.replace(self.cfg, adapter=dataclasses.replace(self.cfg.adapter, r=r))
        # PiSSA-style inits need real weights; methods.py uses the plain init on meta, which has the same shapes
        return model_mod.attach_adapter(copy.deepcopy(self.base), cfg)

    def count(self, r: int) -> int:
        if r not in self.cache:
            model = self.build(r)
            self.models[r] = model
            self.cache[r] = trainable_count(model)
        return self.cache[r]

    def model(self, r: int) -> PeftModel:
        self.count(r)
        return self.models[r]

    def largest_fitting(self, cap: int, r_max: int, start: int = 1) -> Optional[int]:
        """The largest r in [1, r_max] with count(r) <= cap (counts never fall as r grows), or None."""
        # LoRA-like counts are affine in r: guess from the counts at start and start + 1, then confirm exactly at
        # the guess and one above (usually the configured rank and the next, already counted)
        start = max(1, min(start, r_max - 1))
        slope = self.count(start + 1) - self.count(start) if r_max >= 2 else 0
        if slope > 0:
            guess = max(1, min(r_max, start + (cap - self.count(start)) // slope))
            if self.count(guess) <= cap and (guess == r_max or self.count(guess + 1) > cap):
                return guess
        if self.count(1) > cap:
            return None
        lo, hi = 1, 2
        while hi <= r_max and self.count(hi) <= cap:  # lo fits; double until hi does not
            lo, hi = hi, hi * 2
        hi = min(hi, r_max + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.count(mid) <= cap:
                lo = mid
            else:
                hi = mid
        return lo
