"""The names of everything loraclf writes: the run folder, its checkpoints and report, exports, compare and sweep
folders. Every other module names these files through here.

Layout of a run folder:

    RUN/
      config.yaml          the resolved config
      label_map.json       {"id2label": {"0": name, ...}, "label2id": {name: 0, ...}, "int_labels": bool}
      params.json          trainable-parameter breakdown
      history.jsonl        one JSON record per log or evaluation
      metrics.json         final metrics per split, best step, run time, hardware
      decision.json        how logits become outputs (problem type, temperature, thresholds, target scaling)
      val_predictions.csv  the validation split's predictions at the best checkpoint
      adapter/             standard PEFT files (adapter_config.json, adapter_model.safetensors), head included
      tokenizer/           the tokenizer used for training
      checkpoints/step-N/  resumable checkpoints; a checkpoint is complete only when COMPLETE exists in it
      report/              plots and report.html
"""

CONFIG = "config.yaml"
LABEL_MAP = "label_map.json"
PARAMS = "params.json"
HISTORY = "history.jsonl"
METRICS = "metrics.json"
DECISION = "decision.json"  # how logits become outputs: problem type, temperature, thresholds, target scaling
LOSS = "loss.json"  # the training loss and the weights it used (class weights, target scaling)
VAL_PREDICTIONS = "val_predictions.csv"
ADAPTER = "adapter"
MODEL_CARD = "README.md"  # in adapter/ and in an export folder: the Hugging Face model card
TOKENIZER = "tokenizer"
CHECKPOINTS = "checkpoints"
REPORT = "report"
COMPLETE = "COMPLETE"  # written last into a checkpoint folder; its absence marks a torn checkpoint
ROUNDS = "rounds"
TRACKING = "tracking.json"  # where the trackers wrote: MLflow tracking URI + run id, TensorBoard folder
TENSORBOARD = "tensorboard"
ADAPT = "adapt.json"  # self-training: the rounds and their pseudo-label counts
PSEUDO_LABELS = "pseudo_labels.csv"
SWEEP_TRIAL = "sweep_trial.json"  # in each sweep trial's run folder: study, trial number, params, state

# inside checkpoints/step-N/
CKPT_WEIGHTS = "trainable.safetensors"
CKPT_OPTIMIZER = "optimizer.pt"
CKPT_SCHEDULER = "scheduler.pt"
CKPT_RNG = "rng.pt"
CKPT_STATE = "state.json"

# inside report/
REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
PER_LABEL_PNG = "per_label.png"  # multi-label
PREDICTED_VS_TRUE_PNG = "predicted_vs_true.png"  # regression
RESIDUALS_PNG = "residuals.png"  # regression
RELIABILITY_PNG = "reliability.png"  # a calibrated single-label run

# `loraclf compare` output folder
COMPARE_MD = "compare.md"
COMPARE_CSV = "compare.csv"

# an export folder (a plain transformers model folder)
EXPORT_INFO = "loraclf_export.json"  # how the folder was made; serve/predict read max_length from it
ONNX_FILE = "model.onnx"
HF_CONFIG = "config.json"

# a sweep's output folder
SWEEP_SUMMARY = "sweep_summary.csv"
SWEEP_BEST = "best.yaml"
SWEEP_PLOTS = "plots"
SWEEP_STUDY_DB = "study.db"  # the default SQLite storage, inside the sweep folder
