"""The run folder as one object (issue 38) and the run-folder files that change outputs (issue 42): files keep the
user's umask, a damaged decision.json or adapter is one line naming the file and its cause in every verb that
reads it (predict, evaluate, export, serve's loader, the Python API), and nothing is written."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

import loraclf
from helpers_infer import tiny_run_overrides
from loraclf import runs
from loraclf.base.errors import LoraclfError, ModelError, RunError
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.training import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("run_folder")
    return Path(train(load_config(None, tiny_run_overrides(tiny_bert, tiny_data, root, "tiny")), quiet=True).run_dir)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ------------------------------------------------------------------------------------------ file modes


def test_atomic_writes_keep_the_umask_not_mkstemps_private_modes(tmp_path):
    old = os.umask(0o022)
    try:
        runs.atomic_write_text(tmp_path / "a.json", "{}")
        with runs.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inside.txt").write_text("x")
        assert runs.umask() == 0o022
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644  # mkstemp alone gives 0600
    assert _mode(tmp_path / "folder") == 0o755  # mkdtemp alone gives 0700
    assert _mode(tmp_path / "folder" / "inside.txt") == 0o644


def test_a_stricter_umask_is_kept_too(tmp_path, umask_027):
    runs.atomic_write_bytes(tmp_path / "b.bin", b"x")
    with runs.atomic_dir(tmp_path / "d"):
        pass
    assert _mode(tmp_path / "b.bin") == 0o640 and _mode(tmp_path / "d") == 0o750


def test_a_trained_run_folder_is_readable_by_others(tiny_run):
    """What train writes (loraclf's own files and the Hugging Face ones beside them) has one mode under umask 022."""
    for name in (runs.CONFIG, runs.LABEL_MAP, runs.METRICS, runs.DECISION):
        assert _mode(tiny_run / name) & 0o044 == 0o044, name
    assert _mode(tiny_run / runs.ADAPTER) & 0o055 == 0o055
    assert _mode(tiny_run / runs.ADAPTER / "adapter_model.safetensors") & 0o044 == 0o044


# ------------------------------------------------------------------------------------------ one Run


def test_run_opens_once_with_its_config_labels_and_decision(tiny_run):
    run = runs.Run.open(tiny_run)
    assert run.config.model.problem_type == run.decision.problem_type == run.problem_type
    assert run.id2label == runs.read_label_map(tiny_run).id2label and run.adapter_dir == tiny_run / runs.ADAPTER
    assert runs.as_run(run) is run and runs.open_model_folder(tiny_run).path == tiny_run
    with pytest.raises(RunError, match="not an exported model folder"):
        runs.ExportFolder.open(tiny_run)


# ------------------------------------------------------------------------------------------ damaged decision.json

DAMAGE = {  # id: (decision.json edit, cause words)
    "thresholds on a 4-class model": ({"thresholds": [0.5]}, "has none"),
    "threshold NaN": ({"thresholds": [float("nan")]}, "thresholds"),
    "temperature infinite": ({"temperature": float("inf")}, "'temperature' must be a positive finite number"),
    "temperature zero": ({"temperature": 0}, "'temperature' must be a positive finite number"),
    "target std a string": ({"target_std": "wide"}, "'target_mean' and 'target_std' must be finite numbers"),
    "target std huge": ({"target_std": 1e308}, "'target_mean' and 'target_std' must be finite numbers"),
    "problem type disagrees": ({"problem_type": "regression"}, "disagrees with config.yaml's"),
    "unknown problem type": ({"problem_type": "ranking"}, "unknown problem_type 'ranking'"),
    "notes not an object": ({"notes": [1]}, "'notes' must be a JSON object"),
}


def _damaged_copy(tiny_run: Path, tmp_path: Path, edit: dict) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    d = json.loads((run / runs.DECISION).read_text())
    d.update(edit)
    (run / runs.DECISION).write_text(json.dumps(d))  # json writes NaN / Infinity as Python reads them back
    return run


def _one_line_exit_2(capsys, argv: list[str], words: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert words in lines[0] and runs.DECISION in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_decision_is_one_line_in_every_verb(case, tiny_run, tiny_data, tmp_path, capsys):
    edit, words = DAMAGE[case]
    run = _damaged_copy(tiny_run, tmp_path, edit)
    before = sorted(p.name for p in tmp_path.iterdir())
    _one_line_exit_2(capsys, ["predict", str(run), "--input", str(tiny_data["test"]), "--output",
                              str(tmp_path / "p.csv")], words)
    _one_line_exit_2(capsys, ["evaluate", str(run), "--data", str(tiny_data["test"])], words)
    _one_line_exit_2(capsys, ["export", str(run), "--output", str(tmp_path / "export")], words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no prediction file, no export folder
    with pytest.raises(RunError, match=words.replace("(", r"\(").replace(")", r"\)")):
        loraclf.Classifier.from_run(run)
    from loraclf.serve.app import load_models

    with pytest.raises(LoraclfError, match="damaged"):
        load_models([run])


def test_an_intact_binary_threshold_is_accepted(tiny_run, tmp_path):
    """The check is not a blanket refusal: thresholds of the right shape on a model that has them load."""
    run = _damaged_copy(tiny_run, tmp_path, {})
    assert runs.Run.open(run).decision.thresholds is None
    labels = json.loads((run / runs.LABEL_MAP).read_text())
    assert len(labels["id2label"]) == 4  # so a threshold list is wrong here, as the cases above assume


# ------------------------------------------------------------------------------------------ NaN adapter weights


def _poison_adapter(tiny_run: Path, tmp_path: Path, value: float) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = run / runs.ADAPTER / "adapter_model.safetensors"
    state = load_file(str(path))
    name = next(k for k in state if "lora_B" in k)
    state[name] = torch.full_like(state[name], value)
    save_file(state, str(path))
    return run


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_adapter_with_nan_or_inf_weights_is_refused_not_predicted_from(value, tiny_run, tiny_data, tmp_path,
                                                                          capsys):
    run = _poison_adapter(tiny_run, tmp_path, value)
    code = main(["predict", str(run), "--input", str(tiny_data["test"]), "--output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "NaN or infinite weights" in err and "lora_B" in err and "adapter" in err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(ModelError, match="NaN or infinite weights"):
        loraclf.Classifier.from_run(run)
