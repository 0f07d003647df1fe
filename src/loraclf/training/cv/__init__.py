"""K-fold training: the one k-fold loop of loraclf, used by `loraclf cv` and by `loraclf audit`'s label issues.

    folds           which rows each fold holds out: stratified (single-label), iteratively stratified
                    (multi-label), binned on the target (regression), grouped by data.group_column; the checks
    run             each fold a real training run in its own folder, its held-out predictions saved beside it
                    (heldout.npz), a finished fold reused (resume); the out-of-fold outputs
    cross_validate  the `cv` verb: checks, the folds, oof.csv, cv.json (mean and std over folds), report.html;
                    read_oof reads a finished cv run back for `audit --from-cv`
"""

from .cross_validate import CVResult, fold_plan, load, read_oof, run_cv
from .folds import assign, check
from .run import HELDOUT, Fold, Heldout, out_of_fold, read_heldout, run_folds, train_fold

__all__ = ["CVResult", "run_cv", "load", "fold_plan", "read_oof", "assign", "check", "HELDOUT", "Fold", "Heldout",
           "out_of_fold", "read_heldout", "run_folds", "train_fold"]
