"""Writing and reading run-folder files safely: atomic writes (temp file, fsync, rename) that keep the user's
umask, JSON readers that name a damaged file as such, and checks that an output path can be written before any
work starts."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..base.errors import RunError

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask (read without changing it where /proc has it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a temp file in the same folder, fsync it, rename it over path. The file gets the mode a plain open()
    would give it (0644 under the usual umask 022), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing; the run folder is incomplete (was training interrupted?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON; the run folder is damaged (train the run again)") from None


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp folder beside path; on success it is fsynced and renamed to path (replacing any old one). The
    folder and everything in it get the modes a plain mkdir and open would give them (0755 and 0644 under umask
    022), not mkdtemp's private 0700 or the 0600 some writers use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        mask = umask()
        for p in tmp.rglob("*"):
            # one mode for everything inside, whoever wrote it (safetensors writes 0600 files of its own)
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line and fsync; a torn last line is skipped by read_jsonl."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    path = Path(path)
    if not path.exists():
        return out
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise damaged(path, f"byte 0x{e.object[e.start]:02x} at position {e.start} is not UTF-8 text") from None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill mid-write
        if not isinstance(record, dict):
            raise damaged(path, f"line {len(out) + 1} is {type(record).__name__}, not a JSON object")
        out.append(record)
    return out



# ------------------------------------------------------------------------------------------ checked readers


def damaged(path: str | Path, why: str) -> RunError:
    """The one error for a run-folder file that parses but does not hold what loraclf wrote there."""
    return RunError(f"{path} is damaged ({why}); it is not what loraclf wrote: restore it or train the run again")


def read_json_object(path: str | Path, required: dict | None = None) -> dict:
    """A JSON file that must hold an object; `required` maps keys that must be present to their allowed types."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise damaged(path, f"expected a JSON object, got {type(obj).__name__}")
    for key, types in (required or {}).items():
        if key not in obj:
            raise damaged(path, f"'{key}' is missing")
        if not isinstance(obj[key], types) or (isinstance(obj[key], bool) and bool not in _as_tuple(types)):
            raise damaged(path, f"'{key}' is {type(obj[key]).__name__}")
    return obj


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def read_optional_object(path: str | Path) -> dict:
    """A side file that may be absent ({} then) but, when present, must hold a JSON object."""
    return read_json_object(path) if Path(path).is_file() else {}


# ------------------------------------------------------------------------------------------ output paths


def _existing_parent(p: Path) -> Path:
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _probe(folder: Path, what: str, p: Path) -> None:
    """Create and remove one temp file in folder: the only sure test of writability (root ignores mode bits)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".loraclf-probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunError(f"cannot write {what} {p}: {e.strerror or type(e).__name__} in {folder}") from None


def check_output_file(path: str | Path, what: str = "--output") -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, under a file, or unwritable."""
    p = Path(path)
    if p.is_dir():
        raise RunError(f"{what} {p} is a folder; give the path of a file to write")
    parent = _existing_parent(p)
    if not parent.is_dir():
        raise RunError(f"cannot write {what} {p}: {parent} is a file, not a folder")
    _probe(parent, what, p)
    return p


def check_output_dir(path: str | Path, what: str = "output.dir") -> Path:
    """Refuse, before any work, an output folder that cannot be created or written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunError(f"{what} {p} is a file, not a folder; give a folder path")
    parent = p if p.is_dir() else _existing_parent(p)
    if not parent.is_dir():
        raise RunError(f"cannot create {what} {p}: {parent} is a file, not a folder")
    _probe(parent, what, p)
    return p
