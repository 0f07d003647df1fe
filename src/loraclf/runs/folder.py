"""Run folders on disk: naming a new one, finding its complete checkpoints, cleaning up after a kill, and reading
its label map; export folders: telling one from a run folder and reading how it was made."""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import RunError
from .io import check_output_dir, damaged, read_json_object
from .layout import CHECKPOINTS, COMPLETE, CONFIG, EXPORT_INFO, HF_CONFIG, LABEL_MAP

def new_run_dir(out_dir: str | Path, run_name: str, overwrite: bool) -> Path:
    """The path a new run will be published at; refuses to clobber unless overwrite is set."""
    check_output_dir(out_dir, "output.dir")
    run = Path(out_dir) / run_name
    if run.exists() and not run.is_dir():
        raise RunError(f"{run} is a file, not a run folder; pick another output.run_name")
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise RunError(
            f"run folder {run} already exists; pick another output.run_name, set output.overwrite=true, "
            f"or continue it with --resume"
        )
    if Path(out_dir).is_dir():  # a kill while an earlier run of this name was being created left its temp folder
        for stale in Path(out_dir).glob(f".{glob.escape(run_name)}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    return run


def safe_run_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "run"


def checkpoint_dirs(run: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Torn ones (no COMPLETE marker) are ignored."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run)
    return dirs[-1] if dirs else None


def prune_checkpoints(run: str | Path, keep_last: int, keep: Path | None) -> None:
    """Delete complete checkpoints beyond the newest keep_last, never the one in keep (the best)."""
    dirs = checkpoint_dirs(run)
    doomed = dirs[:-keep_last] if keep_last > 0 else dirs
    for p in doomed:
        if keep is not None and p.resolve() == Path(keep).resolve():
            continue
        # renamed away first, so a kill during the delete never leaves a half-deleted step-N behind
        gone = p.with_name(f".{p.name}.del.tmp")
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(p, gone)
        shutil.rmtree(gone, ignore_errors=True)


def remove_temp_files(run: str | Path) -> list[Path]:
    """Clean up after writes cut short by a kill: temp files and folders of the atomic writers in RUN and
    RUN/checkpoints. A `.NAME.old` whose NAME is missing (killed between atomic_dir's two renames) is put back."""
    removed = []
    for folder in (Path(run), Path(run) / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not p.name.startswith("."):
                continue
            if p.name.endswith(".old"):
                original = p.with_name(p.name[1:-len(".old")])
                if not original.exists():
                    os.replace(p, original)
                    continue
            elif not p.name.endswith(".tmp"):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@dataclass
class LabelMap:
    """A run's label map: class names by id, and whether the labels were integers (0..K-1) in the data."""

    id2label: dict[int, str]
    int_labels: bool


def _id2label(path: Path, raw) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise damaged(path, "'id2label' must map '0', '1', ... to class names")
    try:
        id2label = {int(k): v for k, v in raw.items()}
    except (TypeError, ValueError):
        raise damaged(path, "'id2label' keys must be class ids '0', '1', ...") from None
    if sorted(id2label) != list(range(len(id2label))) or not all(isinstance(v, str) for v in id2label.values()):
        raise damaged(path, "'id2label' must map the ids 0..K-1 to class names")
    if len(set(id2label.values())) != len(id2label):
        raise damaged(path, "'id2label' names a class twice")
    return id2label


def read_label_map(run: str | Path) -> LabelMap:
    """RUN/label_map.json, shape-checked; runs written before int_labels was recorded infer it from the names."""
    path = Path(run) / LABEL_MAP
    saved = read_json_object(path, {"id2label": dict})
    id2label = _id2label(path, saved["id2label"])
    if "label2id" in saved and not isinstance(saved["label2id"], dict):
        raise damaged(path, "'label2id' must map class names to ids")
    if "int_labels" in saved and not isinstance(saved["int_labels"], bool):
        raise damaged(path, "'int_labels' must be true or false")
    if "int_labels" in saved:
        return LabelMap(id2label, bool(saved["int_labels"]))
    return LabelMap(id2label, all(str(v).isdigit() and int(v) == k for k, v in id2label.items()))


def is_export_dir(path: str | Path) -> bool:
    """A model folder (config.json) that is not a run folder."""
    p = Path(path)
    return (p / HF_CONFIG).is_file() and not (p / CONFIG).is_file()


def read_export_info(folder: str | Path) -> dict | None:
    """How an export folder was made (FOLDER/loraclf_export.json), or None for a model folder without one."""
    p = Path(folder) / EXPORT_INFO
    return read_json_object(p) if p.is_file() else None
