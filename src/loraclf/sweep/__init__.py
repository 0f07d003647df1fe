"""Hyperparameter sweeps on Optuna: a search space over any config key, many workers on one study.

Each trial is one training run (training.train), and a trial over budget.max_trainable_params is refused before it
trains (model.budget). spec: the sweep file and its defaults; study: storage, study and trials (`run_sweep`);
results: what a sweep writes into its folder (sweep_summary.csv, best.yaml, plots/), from the study storage alone.
It may import training, model, data, runs, config, task and base; only the faces (cli, api) may import it.
"""

from .results import summary_frame, trial_state, write_plots, write_results
from .spec import METRICS, PRUNERS, SAMPLERS, Param, SweepSpec, load_sweep, metrics_of, trial_config
from .study import SweepError, open_storage, open_study, run_sweep, with_driver

__all__ = ["METRICS", "PRUNERS", "SAMPLERS", "Param", "SweepError", "SweepSpec", "load_sweep", "metrics_of",
           "open_storage", "open_study", "run_sweep", "summary_frame", "trial_config", "trial_state",
           "with_driver", "write_plots", "write_results"]
