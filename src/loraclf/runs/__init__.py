"""The run folder: the names of its files (layout), safe writes and checked reads (io), run and export folders on
disk (folder), a finished run or export opened once as an object (run: `Run`, `ExportFolder`), and checkpoints
(checkpoints, which loads torch). Every command opens its folder here and passes the `Run` down. It may import
loraclf.base, loraclf.config (a run's config.yaml) and loraclf.task (its decision.json); nothing here imports the
model, data or training code."""

from .layout import *  # noqa: F401,F403
from .io import (  # noqa: F401
    umask,
    atomic_write_bytes,
    atomic_write_text,
    write_json,
    read_json,
    atomic_dir,
    append_jsonl,
    read_jsonl,
    damaged,
    read_json_object,
    read_optional_object,
    check_output_file,
    check_output_dir,
)
from .folder import (  # noqa: F401
    new_run_dir,
    safe_run_name,
    checkpoint_dirs,
    latest_checkpoint,
    prune_checkpoints,
    remove_temp_files,
    LabelMap,
    read_label_map,
    is_export_dir,
    read_export_info,
)
from .run import (  # noqa: F401
    Run,
    ExportFolder,
    ModelFolder,
    open_model_folder,
    as_run,
    load_run_config,
    resume_config,
    read_decision,
)
