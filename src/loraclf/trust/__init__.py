"""Trust in the data: `loraclf audit` (label issues, duplicates and leaks between splits, summaries).

It owns the audit of a config's data: out-of-fold probabilities from k-fold training (labels.py, on
loraclf.training), cleanlab's label-issue search, exact and near duplicates on the encoder's embeddings
(duplicates.py, embed.py), the per-split summaries (summary.py), the output folder, its HTML page and the cleaned
train file (audit.py, page.py, clean.py). It may import training, infer, model, data, runs, config, task and base;
only the faces (cli, api) import it. (`explain`, the other half of issue 41, lives in infer/explain.py.)

    embed       mean-pooled encoder embeddings, L2-normalised
    duplicates  exact (normalised) and near (cosine, blocked matrix products) duplicates, within and across splits
    labels      out-of-fold probabilities from loraclf.training.cv's folds (resumable) or a finished cv run
                (--from-cv), cleanlab's find_label_issues
    summary     class balance, text lengths and their outliers, empty or near-empty texts
    page        audit.html
    clean       the train file without the flagged rows, or relabelled (--write-clean, --relabel)
    audit       the verb: checks, then the steps above, then the files
"""

from .audit import AuditResult, run_audit

__all__ = ["AuditResult", "run_audit"]
