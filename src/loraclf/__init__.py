"""loraclf: fine-tune pretrained encoders with PEFT adapters for text classification, under a parameter budget.

The Python API (api.py; the README's "Python API"):

    import loraclf
    result = loraclf.train(train_df=df, **{"train.max_steps": 60})
    clf = loraclf.Classifier.from_run(result.run_dir)
    clf.predict(["Who wrote Hamlet?"])
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .api import Classifier, TrainResult, train

__all__ = ["train", "Classifier", "TrainResult", "__version__"]
API_NAMES = ("Classifier", "TrainResult")

# The API is imported on first use of one of its names: it pulls in torch (~3 s), which `loraclf --help`, `config`
# and `validate` must not pay for (nothing in the package imports loraclf itself, so this hides no cycle).


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'loraclf' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`loraclf.train` is the API's function although loraclf/train/ is a subpackage of that name: the import system
    sets the package attribute once, when the subpackage first loads, which would hide the function for good."""

    @property
    def train(self):
        from .api import train

        return train

    @train.setter
    def train(self, subpackage: types.ModuleType) -> None:  # `from loraclf.train import x` reads sys.modules
        self.__dict__["train_package"] = subpackage


sys.modules[__name__].__class__ = _Package
