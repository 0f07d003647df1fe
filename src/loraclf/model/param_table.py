"""The rows of the `loraclf budget` table: a built PeftModel's parameters by role (adapter, head, other trainable)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

from .counting import trainable_count

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

_LAYER = re.compile(r"^.*?\.\d+\.")  # everything up to the first layer index: roberta.encoder.layer.3.


def _plain(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    return re.sub(r"\.modules_to_save\.[^.]+", "", name)


def _shape(t: torch.Tensor) -> str:
    return " x ".join(str(d) for d in t.shape)


def _tally(rows: dict, key, p: torch.Tensor, trainable: bool, **fields) -> None:
    row = rows.setdefault(key, {"params": 0, "trainable": 0, **fields})
    row["params"] += p.numel()
    row["trainable"] += p.numel() if trainable else 0


def _rows(model: PeftModel, head_roots: tuple, head_lora: Optional[str]) -> tuple[dict, dict, dict, int, int]:
    """One pass over the parameters: (adapter, head, other) rows, the model total and PEFT's spare head copies."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuners = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    adapter, head, other = {}, {}, {}
    total = spare = 0

    def in_head(path: str) -> bool:
        return any(path == h or path.startswith(h + ".") or path.endswith("." + h) or ("." + h + ".") in path
                   for h in head_roots)

    for name, p in model.named_parameters():
        if ".original_module." in name:  # PEFT's frozen spare copy of a modules_to_save layer
            spare += p.numel()
            continue
        total += p.numel()
        path = _plain(name)
        owner = next((t for t in tuners if path.startswith(t + ".")), None)
        if owner is not None and not path[len(owner) + 1:].startswith("base_layer."):
            kind = path[len(owner) + 1:].split(".")[0]  # lora_A, lora_B, lora_magnitude_vector, ia3_l, ...
            if head_lora and owner == head_lora:
                _tally(head, (owner, kind), p, p.requires_grad, shape=_shape(p))
            else:
                _tally(adapter, (_LAYER.sub("", owner), kind), p, p.requires_grad, layers=0, shape=_shape(p))
                adapter[(_LAYER.sub("", owner), kind)]["layers"] += 1
            continue
        if owner is not None:
            path = owner + path[len(owner) + len(".base_layer"):]
        module = path.rpartition(".")[0]
        if ".modules_to_save." in name or in_head(module):
            _tally(head, (module, "weights"), p, p.requires_grad, shape="")
            row = head[(module, "weights")]
            row["shape"] = (row["shape"] + " + " if row["shape"] else "") + _shape(p)
        elif p.requires_grad:
            _tally(other, _LAYER.sub("", path), p, True, layers=0, shape=_shape(p))
            other[_LAYER.sub("", path)]["layers"] += 1
    return adapter, head, other, total, spare


def breakdown(model: PeftModel, head_modules: list[str], head_lora: Optional[str]) -> dict:
    """Parameters of a built PeftModel by role: adapter rows per target module type and parameter kind, head rows
    layer by layer, other trainable rows (biases, LayerNorms), and totals."""
    head_roots = tuple(head_modules) + ((head_lora,) if head_lora else ())
    adapter, head, other, total, spare = _rows(model, head_roots, head_lora)
    adapter_rows = [{"module": m, "param": k, **v} for (m, k), v in adapter.items()]
    head_rows = [{"module": m, "param": k, **v} for (m, k), v in head.items()]
    other_rows = [{"param": k, **v} for k, v in other.items()]
    added = sum(r["params"] for r in adapter_rows) + sum(r["params"] for r in head_rows if r["param"] != "weights")
    trainable = sum(r["trainable"] for r in adapter_rows + head_rows + other_rows)
    exact = trainable_count(model)
    assert trainable == exact, (trainable, exact)  # every trainable parameter is in exactly one row
    return {
        "adapter_rows": adapter_rows, "head_rows": head_rows, "other_rows": other_rows,
        "adapter_params": sum(r["trainable"] for r in adapter_rows),
        "head_params": sum(r["trainable"] for r in head_rows),
        "other_params": sum(r["trainable"] for r in other_rows),
        "trainable": trainable, "base_params": total - added, "model_params": total,
        "percent": 100.0 * trainable / total if total else 0.0,
        # PEFT's print_trainable_parameters (and the run's params.json) also count the spare copies
        "peft_all_params": total + spare, "peft_percent": 100.0 * trainable / (total + spare) if total else 0.0,
    }
