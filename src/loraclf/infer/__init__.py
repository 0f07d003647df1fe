"""Inference: the one loader for run and export folders (engine), the one path from a caller's inputs to texts
(inputs: files, DataFrames, lists, HTTP bodies), the one model pass (forward: token-capped batches, windows of long
documents pooled, the decision applied), the metrics of each problem type (metrics), the predict and evaluate verbs
on files (files), and the int8 and ONNX engines (int8, onnx). It may import loraclf.model, data, runs, config, task
and base; it never imports training, sweep, serve or publish, so serving a model needs no training code."""
