"""Bounds shared by the config and its checks."""

from ..base.device import INFERENCE_PRECISIONS, INT8, INT8_ENGINES, PRECISIONS  # noqa: F401 (the vocabulary, re-exported)
# the default --batch-size of predict and evaluate (batch_size=None in the API): int8 runs smaller batches, which
# measured 1.13x (onnxruntime's engine) and 1.49x (torch's) the texts/s of batches of 64 on a Zen 4, where bf16 and
# fp32 gained nothing or less from them (bench/results/predict_speed_zen4.md against predict_speed_zen4_bs16.md)
PREDICT_BATCH = 64
INT8_PREDICT_BATCH = 16
# upper bounds of size-like keys: far above any real use, and low enough that torch, NumPy (seeds) and the memory of
# one machine can hold what they size, so absurd values fail in validation instead of deep in a model build
MAX_RANK = 8192
MAX_BATCH = 4096
MAX_STEPS = 10**9
MAX_SEED = 2**32 - 1
