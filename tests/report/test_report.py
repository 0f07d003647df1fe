"""Run reports (curves, confusion matrix, HTML), run comparison, and live tracking (TensorBoard, MLflow).

Two real tiny-model trainings on the AG-News-shaped tiny_data rows are shared by the module: run A with both trackers
and the automatic report, run B with another learning rate, quiet, for the comparison.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import IN_CI

from loraclf.report import compare
from loraclf import report, runs
from loraclf.report import figures, files as report_files
from loraclf.cli import main
from loraclf.config import load_config
from loraclf.training import train

CURVE_NAMES = ["train loss", "validation loss", "validation accuracy", "validation macro-F1", "learning rate"]
# the line colours figures.plot_curves uses, in CURVE_NAMES order
CURVE_COLOURS = [(0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C), (0x94, 0x67, 0xBD), (0x7F, 0x7F, 0x7F)]


def _overrides(tiny_bert, tiny_data, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"model.name_or_path={tiny_bert}", f"data.train={tiny_data['train']}", f"data.validation={tiny_data['val']}",
        f"data.test={tiny_data['test']}", "data.label_names=[World,Sports,Business,Sci/Tech]", "data.max_length=32",
        "train.max_steps=6", "train.per_device_train_batch_size=16", "train.mixed_precision=fp32",
        "train.logging_steps=2", "eval.eval_steps=3", f"output.dir={out}", f"output.run_name={name}",
        f"data.cache_dir={out / 'cache'}", *extra,
    ]


class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def two_runs(tiny_bert, tiny_data, tmp_path_factory):
    """(run A, its stderr, run B, its stderr, B's tracking.json after the crash).

    A: both trackers and the automatic report. B: another learning rate, MLflow only, quiet; it crashes after its
    last evaluation (so its MLflow run is left active in this process) and is then resumed from step 3.
    """
    out = tmp_path_factory.mktemp("report_runs")
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        run_a = train(load_config(None, _overrides(tiny_bert, tiny_data, out, "a", "train.learning_rate=5e-3",
                                                   "track=[tensorboard,mlflow]", "output.report=true"))).run_dir
    log_a = buf.getvalue()

    def crash(step, metrics):
        if step == 6:
            raise _Crash()

    cfg_b = load_config(None, _overrides(tiny_bert, tiny_data, out, "b", "train.learning_rate=1e-3", "track=[mlflow]",
                                         "output.report=false"))
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        with pytest.raises(_Crash):
            train(cfg_b, quiet=True, on_eval=crash)
        run_b = out / "b"
        crashed = json.loads((run_b / "tracking.json").read_text())
        assert train(cfg_b, resume=run_b, quiet=True).run_dir == run_b
    return run_a, log_a, run_b, buf.getvalue(), crashed


def _png_info(path: Path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    return img.convert("RGB")


def _has_colour(img: Image.Image, rgb: tuple[int, int, int], tol: int = 12, min_pixels: int = 20) -> bool:
    a = np.asarray(img, dtype=np.int16)
    close = (np.abs(a - np.asarray(rgb, dtype=np.int16)) <= tol).all(axis=-1)
    return int(close.sum()) >= min_pixels


# ------------------------------------------------------------------------------------------ per-run report


def test_train_writes_report_automatically(two_runs):
    run_a, _, run_b, *_ = two_runs
    assert sorted(p.name for p in (run_a / "report").iterdir()) == ["confusion.png", "curves.png", "report.html"]
    assert not (run_b / "report").exists()  # output.report=false


def test_curves_png_has_the_expected_curves(two_runs):
    run_a = two_runs[0]
    img = _png_info(run_a / "report" / "curves.png")
    assert img.width >= 800 and img.height >= 800
    for name, colour in zip(CURVE_NAMES, CURVE_COLOURS):
        assert _has_colour(img, colour), f"no pixels of the {name} curve's colour in curves.png"

    fig = figures.plot_curves(report_files.load_run(run_a))
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in lines] == CURVE_NAMES
    history = runs.read_jsonl(run_a / runs.HISTORY)
    train_steps = [r["step"] for r in history if r["type"] == "train"]
    eval_steps = [r["step"] for r in history if r["type"] == "eval"]
    assert train_steps == [2, 4, 6] and eval_steps == [3, 6]
    assert list(lines[0].get_xdata()) == train_steps
    assert list(lines[1].get_xdata()) == eval_steps
    assert list(lines[2].get_ydata()) == [r["accuracy"] for r in history if r["type"] == "eval"]
    assert list(lines[4].get_ydata()) == [r["learning_rate"] for r in history if r["type"] == "train"]


def test_confusion_png_has_label_names_counts_and_normalised(two_runs):
    run_a = two_runs[0]
    img = _png_info(run_a / "report" / "confusion.png")
    assert img.width >= 600 and img.height >= 300
    val = runs.read_json(run_a / runs.METRICS)["val"]
    fig = figures.plot_confusion(val["confusion_matrix"], val["labels"])
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 2
    for ax in heatmaps:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["World", "Sports", "Business", "Sci/Tech"]
    counts = [t.get_text() for t in heatmaps[0].texts]
    assert counts == [str(c) for row in val["confusion_matrix"] for c in row]
    normalised = np.array([float(t.get_text()) for t in heatmaps[1].texts]).reshape(4, 4)
    np.testing.assert_allclose(normalised.sum(axis=1), 1.0, atol=0.03)  # each true-label row sums to 1


def test_html_embeds_images_and_tables(two_runs):
    run_a = two_runs[0]
    page = (run_a / "report" / "report.html").read_text(encoding="utf-8")
    metrics = runs.read_json(run_a / runs.METRICS)
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(b) for b in embedded] == [(run_a / "report" / n).read_bytes() for n in ("curves.png", "confusion.png")]
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load anything from the network"
    assert "<title>loraclf report: a</title>" in page
    # final metrics table
    assert f"<td>{metrics['val']['accuracy']:.4f}</td>" in page and f"<td>{metrics['test']['macro_f1']:.4f}</td>" in page
    # training-progress table: one row per evaluation, with the train loss logged at or before it
    history = runs.read_jsonl(run_a / runs.HISTORY)
    prog = page.split('class="progress"')[1].split("</table>")[0]
    assert prog.count("<tr>") == 1 + 2
    ev6 = [r for r in history if r["type"] == "eval" and r["step"] == 6][0]
    tr6 = [r for r in history if r["type"] == "train" and r["step"] == 6][0]
    assert f"<tr><td>6</td><td>{ev6['epoch']:.2f}</td><td>{tr6['loss']:.4f}</td><td>{ev6['loss']:.4f}</td>" in prog
    # per-class table, parameters, config, hardware, tracking ids
    for label in ("World", "Sports", "Business", "Sci/Tech"):
        assert f"<td>{label}</td>" in page
    params = runs.read_json(run_a / runs.PARAMS)
    assert f"{params['trainable']:,} trainable" in page
    assert "learning_rate: 0.005" in page
    assert metrics["hardware"]["platform"] in page
    assert json.loads((run_a / "tracking.json").read_text())["mlflow"]["run_id"] in page


def test_html_wrong_examples_sorted_and_escaped(two_runs, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(two_runs[0], run)
    with open(run / runs.VAL_PREDICTIONS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    evil = "<script>alert('x')</script> & <b>bold</b>"
    rows[0].update(text=evil, label="World", predicted="Sports", confidence="0.999")
    rows[1].update(text="right but confident", label="World", predicted="World", confidence="0.9999")
    with open(run / runs.VAL_PREDICTIONS, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    page = report.write_report(run).read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    ex = page.split('class="ex"')[1].split("</table>")[0]
    wrong = [r for r in rows if r["label"] != r["predicted"]]
    assert ex.count("<tr>") == 1 + min(20, len(wrong))
    confs = [float(c) for c in re.findall(r"<td>(\d\.\d{3})</td></tr>", ex)]
    assert confs[0] == 0.999 and confs == sorted(confs, reverse=True)
    assert "right but confident" not in ex


# ------------------------------------------------------------------------------------------ comparison


def test_compare_two_runs(two_runs, tmp_path):
    run_a, _, run_b, *_ = two_runs
    out = tmp_path / "cmp"
    assert main(["compare", str(run_a), str(run_b), "--output", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "| train.learning_rate | 0.005 | 0.001 |" in md
    assert "| output.run_name | a | b |" in md
    assert "model.name_or_path" not in md  # equal keys are not listed
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["a", "b"]
    for row, run in zip(rows, (run_a, run_b)):
        m = runs.read_json(run / runs.METRICS)
        assert float(row["val_accuracy"]) == pytest.approx(m["val"]["accuracy"], abs=1e-4)
        assert float(row["test_macro_f1"]) == pytest.approx(m["test"]["macro_f1"], abs=1e-4)
        assert row["trainable_params"] == str(m["trainable_params"])
    assert {rows[0]["train.learning_rate"], rows[1]["train.learning_rate"]} == {"0.005", "0.001"}
    img = _png_info(out / "curves.png")
    assert img.width >= 800
    fig = compare.plot_compare([report_files.load_run(run_a), report_files.load_run(run_b)], ["a", "b"])
    per_panel = [[ln.get_label() for ln in ax.get_lines()] for ax in fig.axes if ax.get_lines()]
    assert per_panel == [["a", "b"]] * 4


def test_report_and_compare_errors_are_one_line(two_runs, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(two_runs[0] / runs.CONFIG, unfinished / runs.CONFIG)
    cases = [
        (["report", str(tmp_path / "missing")], "run folder not found"),
        (["report", str(unfinished)], "metrics.json is missing"),
        (["compare", str(two_runs[0]), str(unfinished), "--output", str(tmp_path / "c")], "metrics.json is missing"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((["compare", str(two_runs[0]), "--output", str(tmp_path / "file")], "is not a folder"))
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (unfinished / "report").exists() and not (tmp_path / "c").exists()


def test_damaged_run_files(two_runs, tmp_path, capsys):
    run = tmp_path / "damaged"
    shutil.copytree(two_runs[0], run)
    shutil.rmtree(run / "report")
    (run / runs.VAL_PREDICTIONS).write_bytes(b"text,label\n\xff\xfe,1\n")
    assert main(["report", str(run)]) == 2
    assert "val_predictions.csv is not a readable UTF-8 CSV" in capsys.readouterr().err
    assert not (run / "report").exists()
    (run / runs.VAL_PREDICTIONS).unlink()
    with open(run / runs.HISTORY, "a") as f:  # a record from elsewhere and a torn line are skipped, not fatal
        f.write('{"type": "eval", "split": "val", "step": 9, "loss": null}\n{"type": "tra')
    page = report.write_report(run).read_text()
    assert "val_predictions.csv is missing" in page
    assert page.split('class="progress"')[1].split("</table>")[0].count("<tr>") == 1 + 2
    (run / runs.CONFIG).write_text("- just\n- a list\n")
    assert main(["report", str(run)]) == 2
    assert "config.yaml is not a valid YAML mapping" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ tracking


def test_tensorboard_events_match_history(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_a = two_runs[0]
    logdir = json.loads((run_a / "tracking.json").read_text())["tensorboard"]["logging_dir"]
    assert Path(logdir).parent == (run_a / "tensorboard").resolve()
    acc = EventAccumulator(logdir)
    acc.Reload()
    history = runs.read_jsonl(run_a / runs.HISTORY)
    for tag, kind, key in (("train/loss", "train", "loss"), ("train/learning_rate", "train", "learning_rate"),
                           ("eval/loss", "eval", "loss"), ("eval/accuracy", "eval", "accuracy"),
                           ("eval/macro_f1", "eval", "macro_f1")):
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        want = [(r["step"], r[key]) for r in history if r["type"] == kind]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=tag)


def test_mlflow_run_matches_history(two_runs):
    import mlflow
    from mlflow.tracking import MlflowClient

    run_a = two_runs[0]
    info = json.loads((run_a / "tracking.json").read_text())["mlflow"]
    assert info["tracking_uri"] == f"sqlite:///{(run_a / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    got = client.get_run(info["run_id"])
    assert got.info.status == "FINISHED" and got.info.run_name == "a"
    assert got.data.params["train.learning_rate"] == "0.005" and got.data.params["train.max_steps"] == "6"
    history = runs.read_jsonl(run_a / runs.HISTORY)
    for metric, kind, key in (("eval/accuracy", "eval", "accuracy"), ("train/loss", "train", "loss")):
        got_hist = sorted((m.step, m.value) for m in client.get_metric_history(info["run_id"], metric))
        want = [(r["step"], r[key]) for r in history if r["type"] == kind]
        assert [s for s, _ in got_hist] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in got_hist], [v for _, v in want], rtol=1e-6)
    mlflow.set_tracking_uri(info["tracking_uri"])
    assert mlflow.get_run(info["run_id"]).data.metrics["eval/macro_f1"] == pytest.approx(
        [r for r in history if r["type"] == "eval"][-1]["macro_f1"])
    assert not list(run_a.glob("mlruns")) and not Path("mlruns").exists()


def test_resume_continues_the_same_mlflow_run(two_runs):
    from mlflow.tracking import MlflowClient

    _, _, run_b, _, crashed = two_runs
    info = json.loads((run_b / "tracking.json").read_text())["mlflow"]
    assert info["run_id"] == crashed["mlflow"]["run_id"]
    assert "tensorboard" not in info and not (run_b / "tensorboard").exists()
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    assert client.get_run(info["run_id"]).info.status == "FINISHED"
    assert len(client.search_runs([info["experiment_id"]])) == 1
    history = runs.read_jsonl(run_b / runs.HISTORY)
    assert [r["step"] for r in history] == [2, 3, 4, 6, 6]  # the crashed attempt's records past step 3 were dropped
    logged = client.get_metric_history(info["run_id"], "eval/accuracy")
    assert sorted({m.step for m in logged}) == [3, 6]
    final = max((m for m in logged if m.step == 6), key=lambda m: m.timestamp)  # both attempts logged step 6
    assert final.value == pytest.approx(history[-1]["accuracy"])


def test_bad_tracking_uri_is_one_line_and_leaves_no_run(tiny_bert, tiny_data, tmp_path, capsys):
    argv = ["train", *_overrides(tiny_bert, tiny_data, tmp_path, "bad", "track=[mlflow]",
                                 "output.mlflow_tracking_uri=nosuchscheme://x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("loraclf train: error: could not start the trackers ['mlflow']"), err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ logging


def test_log_lines_are_plain_and_quiet_is_quiet(two_runs):
    _, log_a, _, log_b, _ = two_runs
    assert "\r" not in log_a and "\x1b[" not in log_a  # no progress bar off a TTY
    steps = re.findall(r"^\[loraclf\] step (\d+)/6 \| epoch [\d.]+ \| loss [\d.]+ \| lr [\d.e+-]+ \| [\d.]+ samples/s$",
                       log_a, re.M)
    assert steps == ["2", "4", "6"]
    assert re.search(r"^\[loraclf\] report: .*report\.html$", log_a, re.M)
    # quiet silences the info lines; warnings still show (B's 6 steps are too few to learn from, said once a start)
    lines_b = [ln for ln in log_b.splitlines() if ln.startswith("[loraclf]")]
    assert lines_b and all(ln.startswith("[loraclf] warning: only 6 optimizer steps") for ln in lines_b), lines_b


# ------------------------------------------------------------------------------------------ the page in a browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    msg = "headless Chromium not found (Debian package `chromium`, listed in .ci/apt-report.txt)"
    if IN_CI:
        pytest.fail(msg + "; CI=true, so this is a failure, not a skip")
    pytest.skip(msg)


def test_report_renders_in_headless_chromium(two_runs, tmp_path):
    browser = _chromium()
    page = (two_runs[0] / "report" / "report.html").resolve()
    shot = tmp_path / "shot.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    r = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "<title>loraclf report: a</title>" in r.stdout and "Training progress" in r.stdout
    r = subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = _png_info(shot)
    assert img.size == (1280, 2000)
    a = np.asarray(img)
    non_white = (a < 245).any(axis=-1).mean()
    colours = len(np.unique(a.reshape(-1, 3), axis=0))
    assert non_white > 0.05 and colours > 200, (non_white, colours)
    # the embedded curves image was decoded and drawn: the train-loss blue appears on screen
    assert _has_colour(img, CURVE_COLOURS[0], tol=25, min_pixels=30)
