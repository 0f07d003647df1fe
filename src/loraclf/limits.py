"""Bounds shared by the config and its checks."""

# the one precision vocabulary (train.mixed_precision, and --precision of predict, evaluate and serve);
# device.py resolves it against the hardware
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# inference only (--precision of predict, evaluate, serve; Classifier.predict): int8 runs the merged model with its
# nn.Linear layers dynamically quantized (loraclf.quantize), on the CPU, activations in fp32
INT8 = "int8"
INFERENCE_PRECISIONS = (*PRECISIONS, INT8)
# whose int8 (--int8-engine): auto takes the one measured faster on this kind of CPU (loraclf.quantize says why)
INT8_ENGINES = ("auto", "torch", "onnxruntime")
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
