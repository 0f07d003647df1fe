"""The report's progress table says at which step each training loss it shows was logged (issue 21, section 5)."""

from __future__ import annotations


def test_report_progress_table_says_at_which_step_the_training_loss_was_logged(tmp_path):
    """Evaluation at step 66 with train losses logged every 50 steps: the row shows the loss of step 50, labelled."""
    from loraclf.report import files as report_files, html as report

    history = [{"type": "train", "step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in (50, 100)]
    history += [{"type": "eval", "split": "val", "step": s, "epoch": s / 100, "loss": 0.5, "accuracy": 0.8,
                 "macro_f1": 0.7} for s in (66, 100)]
    rf = report_files.RunFiles(tmp_path, {}, {"val": {}}, history=history)
    rows = report.progress_table(rf)
    assert [(r["step"], r["train_loss_step"]) for r in rows] == [(66, 50), (100, 100)]
    page = "".join(report._curves_section(rf, b""))
    assert "training loss (last logged)" in page
    assert "0.0200 (step 50)" in page and "0.0100 (step" not in page
