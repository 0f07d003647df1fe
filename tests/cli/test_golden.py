"""The regrouping's guarantee: `loraclf --help`, every verb's help, and a run folder trained from the packaged data
are what they were when the golden files under tests/golden/ were written (before the code was regrouped).

The run folder is compared file by file after removing what changes from run to run (timestamps, durations, the
output folder, set orders PEFT leaves to hash randomisation, the tokenizer's transient padding state, the python and numpy RNG states in a checkpoint, which depend on what\nran earlier in the process). On the machine
class that wrote the golden files (tests/golden/machine.json: CPU model and flags, torch) every file must then be
byte-identical; on another CPU the float kernels differ, so there the weights are compared by name, shape and size,
and the numbers in the JSON files within a relative 1e-3.

Regenerate (only when a change is meant to alter outputs): LORACLF_WRITE_GOLDEN=1 pytest tests/cli/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
WRITE = os.environ.get("LORACLF_WRITE_GOLDEN") == "1"
VERBS = ("train", "config", "validate", "evaluate", "predict", "explain", "select", "cv", "audit", "budget", "augment", "report", "compare", "sweep",
         "export", "serve", "push")
TRAIN_ARGS = ["train.max_steps=6", "data.validation_split=64", "train.num_threads=1", "train.mixed_precision=fp32",
              "eval.per_device_eval_batch_size=32", "output.run_name=golden"]
TIMING_KEYS = {"train_runtime_s", "wall_time_s", "train_samples_per_second", "finished_at", "samples_per_second",
               "time", "train_time"}
BINARY = (".safetensors", ".pt", ".png")


def _machine() -> dict:
    import torch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": name, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16], "torch": torch.__version__}


def _help_texts(capsys, monkeypatch) -> dict[str, str]:
    from loraclf.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    out = {}
    for name, argv in [("loraclf", ["--help"])] + [(v, [v, "--help"]) for v in VERBS]:
        with pytest.raises(SystemExit):
            main(argv)
        out[name] = capsys.readouterr().out
    return out


def _drop_timing(obj):
    if isinstance(obj, dict):
        if isinstance(obj.get("hardware"), dict):  # the machine it ran on (kernel, memory): names kept, values not
            obj = {**obj, "hardware": {k: "MACHINE" for k in obj["hardware"]}}
        return {k: _drop_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def _normal_text(rel: str, text: str, out_dir: Path, model_dir: Path) -> str:
    """A run-folder text file with what changes from run to run (or clone to clone) removed."""
    text = text.replace(str(out_dir), "OUT").replace(str(model_dir), "MODEL")
    if rel.endswith(".json") and rel != "checkpoints/step-6/COMPLETE":
        obj = _drop_timing(json.loads(text))
        if rel.endswith("adapter_config.json") and isinstance(obj.get("target_modules"), list):
            obj["target_modules"] = sorted(obj["target_modules"])
        if rel.endswith("tokenizer.json"):
            obj.pop("padding", None)
            obj.pop("truncation", None)
        return json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if rel.endswith(".jsonl"):
        return "".join(json.dumps(_drop_timing(json.loads(ln)), sort_keys=True) + "\n" for ln in text.splitlines())
    if rel.endswith("COMPLETE"):  # the checksum manifest: state.json holds the train time
        obj = {k: v for k, v in json.loads(text).items() if k not in ("state.json", "rng.pt")}
        return json.dumps(obj, indent=1, sort_keys=True) + "\n"
    if rel.endswith(".html"):
        text = re.sub(r"finished \d{4}-\d\d-\d\dT[\d:]+", "finished TIME", text)
        text = re.sub(r"<table class=\"hw\">.*?</table>", "<table class=\"hw\">HARDWARE</table>", text, flags=re.S)
    return text


def _torch_rng(path: Path) -> bytes:
    import torch

    return torch.load(path, weights_only=False)["torch"].numpy().tobytes()


def _snapshot(run: Path, out_dir: Path, model_dir: Path) -> dict[str, str]:
    """rel path -> normalised text, or 'sha256 size' for a binary file."""
    snap = {}
    for p in sorted(run.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(run).as_posix()
        data = p.read_bytes()
        if rel.endswith("rng.pt"):  # python's and numpy's states depend on what ran before in the process
            snap[rel] = f"{hashlib.sha256(_torch_rng(p)).hexdigest()} {len(data)}"
        elif rel.endswith(BINARY):
            snap[rel] = f"{hashlib.sha256(data).hexdigest()} {len(data)}"
        else:
            snap[rel] = _normal_text(rel, data.decode("utf-8"), out_dir, model_dir)
    return snap


def _numbers_close(a, b, rel: float = 1e-3) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_numbers_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= rel * max(1, abs(a), abs(b))
    return a == b


def _write(snap: dict[str, str], helps: dict[str, str]) -> None:
    (GOLDEN / "help").mkdir(parents=True, exist_ok=True)
    for name, text in helps.items():
        (GOLDEN / "help" / f"{name}.txt").write_text(text)
    (GOLDEN / "run.json").write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    (GOLDEN / "machine.json").write_text(json.dumps(_machine(), indent=1) + "\n")


@pytest.mark.pretrained
def test_help_and_run_folder_match_the_golden_files(tmp_path, capsys, monkeypatch, minilm_path):
    from loraclf.cli import main

    helps = _help_texts(capsys, monkeypatch)
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "runs"
    assert main(["train", *TRAIN_ARGS, f"output.dir={out_dir}", "--quiet"]) == 0
    snap = _snapshot(out_dir / "golden", out_dir, minilm_path)
    if WRITE:
        _write(snap, helps)
        pytest.skip("golden files written")
    for name, text in helps.items():
        assert text == (GOLDEN / "help" / f"{name}.txt").read_text(), f"`loraclf {name} --help` changed"
    golden = json.loads((GOLDEN / "run.json").read_text())
    assert sorted(snap) == sorted(golden), "the run folder's files changed"
    same_machine = _machine() == json.loads((GOLDEN / "machine.json").read_text())
    differ = [rel for rel in golden if snap[rel] != golden[rel]]
    for rel, want in golden.items():
        got = snap[rel]
        if same_machine or not (rel.endswith(BINARY) or rel.endswith((".json", ".jsonl", "COMPLETE", ".csv", ".html"))):
            assert got == want, f"{rel} differs from the golden run folder (all that differ: {differ})"
        elif rel.endswith(BINARY):
            assert got.split()[1] == want.split()[1], f"{rel}: size changed"
        elif rel.endswith("COMPLETE"):
            assert sorted(json.loads(got)) == sorted(json.loads(want)), f"{rel}: files changed"
        elif rel.endswith(".json") and not rel.endswith("tokenizer.json"):
            assert _numbers_close(json.loads(got), json.loads(want)), f"{rel}: values changed"
