"""`loraclf push RUN REPO_ID`: upload a run's adapter (PEFT files, tokenizer, model card) or its merged export to the
Hugging Face Hub with huggingface_hub. The upload itself needs the network and a token; `stage()` builds the exact
folder that would be uploaded, so that part is testable offline."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional

from . import export
from .. import runs
from ..base.errors import RunError, first_line

WHAT = ("adapter", "export")


def _copy_adapter(run: runs.Run, folder: Path) -> None:
    for sub in (runs.ADAPTER, runs.TOKENIZER):
        src = run.file(sub)
        if not src.is_dir():
            raise RunError(f"{run.path} has no {sub}/ folder; the run did not finish, so there is nothing to push")
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, folder / f.name)


def stage(run: runs.Run | str | Path, folder: str | Path, what: str = "adapter") -> Path:
    """Write into FOLDER (new or empty) exactly what `push` uploads."""
    if what not in WHAT:
        raise RunError(f"--what must be one of {', '.join(WHAT)}, got '{what}'")
    run, folder = runs.as_run(run), Path(folder)
    if what == "export":
        export.export_run(run, folder, overwrite=True)
        return folder
    runs.check_output_dir(folder, "--stage")
    if folder.is_dir() and any(folder.iterdir()):
        raise RunError(f"--stage {folder} is not empty; give a new or empty folder")
    with runs.atomic_dir(folder) as tmp:
        _copy_adapter(run, tmp)
    return folder


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise RunError(f"'{repo_id}' is not a Hugging Face repo id (user/name): {first_line(e)[:200]}") from None
    if "/" not in repo_id:
        raise RunError(f"'{repo_id}' is not a Hugging Face repo id: give it as user/name or org/name")


def push(run: runs.Run | str | Path, repo_id: str, what: str = "adapter", private: bool = False,
         token: Optional[str] = None) -> str:
    """Create the repo (if needed) and upload the staged folder; returns the commit URL."""
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    run = runs.as_run(run)
    with tempfile.TemporaryDirectory(prefix="loraclf-push-") as tmp:
        folder = stage(run, Path(tmp) / "upload", what)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, exist_ok=True, private=private)
            info = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                     commit_message=f"loraclf push of {run.path.name} ({what})")
        except Exception as e:  # offline mode, no network, no token, a refused repo: huggingface_hub raises many types
            raise RunError(f"cannot push {what} to the Hugging Face Hub repo {repo_id}: {type(e).__name__}: "
                           f"{first_line(e)[:200]}") from None
    return str(getattr(info, "commit_url", info))
