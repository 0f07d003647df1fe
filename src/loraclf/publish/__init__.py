"""Artifacts for others: `export` merges a run's adapter into its base and writes a standalone transformers folder
(with the decision folded into the head, optionally ONNX and int8), `card` writes the Hugging Face model card of a
run or an export, and `push` uploads a run's adapter or its export to the Hub. Each takes the opened `runs.Run`.
It may import loraclf.infer, model, data, runs, config, task and base; never training, sweep or serve."""
