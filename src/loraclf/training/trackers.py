"""Live tracking through Accelerate's trackers (TensorBoard in RUN/tensorboard, MLflow), and where they wrote."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .. import runs
from ..config import Config, flatten
from ..base.errors import RunError, first_line


def mlflow_uri(cfg: Config, run: Path) -> str:
    """output.mlflow_tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite store in the run folder.

    Not a plain ./mlruns file store: MLflow 3 refuses those unless MLFLOW_ALLOW_FILE_STORE=true.
    """
    return (cfg.output.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run / 'mlflow.db').resolve()}")


def _shown(uri: str) -> str:
    """A URI as it may be printed: any password replaced."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", uri)


def preflight(cfg: Config) -> None:
    """Before the run folder exists: a tracking URI the user gave must open, so a bad one leaves nothing behind."""
    uri = cfg.output.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if "mlflow" not in cfg.track or not uri:
        return
    import mlflow

    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except ModuleNotFoundError as e:
        raise RunError(f"could not start the trackers {list(cfg.track)}: MLflow tracking URI {_shown(uri)} needs the "
                       f"module '{e.name}', which is not installed (pip install it, or use another URI)") from None
    except Exception as e:  # an unknown scheme, an unreachable server, a refused login...
        raise RunError(f"could not start the trackers {list(cfg.track)}: MLflow tracking URI {_shown(uri)} cannot be "
                       f"used ({type(e).__name__}: {first_line(e)[:200]}); fix output.mlflow_tracking_uri (or "
                       f"$MLFLOW_TRACKING_URI)") from None


def _mlflow_kwargs(cfg: Config, run: Path, saved: dict) -> tuple[str, dict]:
    import mlflow

    uri = mlflow_uri(cfg, run)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # set_tracking_uri also exports $MLFLOW_TRACKING_URI; put the user's value back, or the next run in this
    # process (a sweep trial) would take this run's store for the user's choice
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    active = mlflow.active_run()
    if active is not None and "loraclf.run_dir" in active.data.tags:
        mlflow.end_run("FAILED")  # left running by an earlier train() in this process that raised (e.g. pruned)
    kw = {"run_name": run.name, "tags": {"loraclf.run_dir": str(run.resolve())},
          "nested_run": mlflow.active_run() is not None}
    if uri == f"sqlite:///{(run / 'mlflow.db').resolve()}":
        kw["logging_dir"] = str((run / "mlflow-artifacts").resolve())  # else artifacts default to ./mlruns in the cwd
    if saved.get("mlflow", {}).get("tracking_uri") == uri and saved["mlflow"].get("run_id"):
        kw["run_id"] = saved["mlflow"]["run_id"]  # --resume continues the same MLflow run
    return uri, kw


def read_saved(run: Path) -> dict:
    """RUN/tracking.json ({} when absent), shape-checked."""
    saved = runs.read_optional_object(run / runs.TRACKING)
    for name in ("mlflow", "tensorboard"):
        if not isinstance(saved.get(name, {}), dict):
            raise runs.damaged(run / runs.TRACKING, f"'{name}' must be an object")
    return saved


def start(accelerator, cfg: Config, run: Path) -> list:
    """Start the configured trackers and record where they write (RUN/tracking.json)."""
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(cfg.to_dict()).items()}
    fresh = not (run / runs.HISTORY).exists() and not runs.checkpoint_dirs(run)
    saved = read_saved(run)
    init_kwargs, record, uri = {}, {}, None
    if "tensorboard" in cfg.track:
        record["tensorboard"] = {"logging_dir": str((run / runs.TENSORBOARD / "loraclf").resolve())}
    if "mlflow" in cfg.track:
        uri, init_kwargs["mlflow"] = _mlflow_kwargs(cfg, run, saved)
    try:
        accelerator.init_trackers("loraclf", config=flat, init_kwargs=init_kwargs)
    except Exception as e:  # a bad tracking URI, an unreachable server, a locked store...
        if fresh:
            shutil.rmtree(run, ignore_errors=True)  # nothing trained yet: leave no half-written run folder
        raise RunError(f"could not start the trackers {list(cfg.track)}: {first_line(e)[:300]}") from None
    if "mlflow" in cfg.track:
        active = accelerator.get_tracker("mlflow", unwrap=True)
        record["mlflow"] = {"tracking_uri": uri, "run_id": active.info.run_id, "experiment_id": active.info.experiment_id}
    runs.write_json(run / runs.TRACKING, record)
    return list(cfg.track)


def end(accelerator, trackers: list) -> None:
    if trackers:
        accelerator.end_training()
