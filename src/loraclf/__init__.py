"""loraclf: fine-tune pretrained encoders with PEFT adapters for text classification, under a parameter budget.

The Python API (api.py; the README's "Python API"):

    import loraclf
    result = loraclf.train(train_df=df, **{"train.max_steps": 60})
    clf = loraclf.Classifier.from_run(result.run_dir)
    clf.predict(["Who wrote Hamlet?"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base.version import __version__

if TYPE_CHECKING:
    from .api import Classifier, TrainResult, audit, cross_validate, train

__all__ = ["train", "cross_validate", "audit", "Classifier", "TrainResult", "__version__"]
API_NAMES = ("train", "cross_validate", "audit", "Classifier", "TrainResult")

# The API is imported on first use of one of its names (PEP 562): it pulls in torch (~3 s), which `loraclf --help`,
# `config` and `validate` must not pay for. The training code itself lives in loraclf.training, so `loraclf.train`
# is only ever the API's function.


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'loraclf' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
