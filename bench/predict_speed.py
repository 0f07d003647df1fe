"""Benchmark: prediction throughput (texts/s) of `loraclf predict` against `transformers.pipeline`, same model.

A packaged MiniLM-L6 (BERT, 6 layers, hidden 384) is trained for a few steps with LoRA on AG News (the weights do
not matter for speed; the architecture and tokenizer do), exported with `loraclf export`, and then, in one process,
alternating, each contender classifies the 2,000 texts of ../shared/data/ag_news/test.csv:

    pipeline (defaults)       transformers.pipeline("text-classification", model=EXPORT)(texts)
    pipeline (batch_size=64)  the same with batch_size=64: a fairer baseline
    loraclf fp32              loraclf.infer.forward.predict_texts on the same exported model (what `loraclf predict` runs)
    loraclf bf16 autocast     the same under --precision bf16 (only where the CPU has native bf16)
    loraclf int8, torch       `predict --precision int8 --int8-engine torch` on an `export --quantize int8` folder:
                              its model.int8.safetensors (torch.ao dynamic quantization of every nn.Linear), checked
                              to give exactly the in-memory loraclf.infer.int8.quantize_model outputs
    loraclf int8, onnxruntime with --onnx: `--int8-engine onnxruntime` on the same folder: its model.int8.onnx
                              (fused graph, per-channel QInt8), run through loraclf's predict path
    onnxruntime fp32 / int8   with --onnx: the export's model.onnx, and onnxruntime.quantization.quantize_dynamic of
                              it at its defaults (what a user writes by hand: no fusion, per-tensor), fed loraclf's
                              length-sorted batches
    loraclf predict file      predict_file(EXPORT, test.csv, out.csv): loading, reading, predicting, writing

Each timing is the median of --repeats rounds. Predictions are checked against the pipeline's, loraclf fp32's and
loraclf bf16's (argmax agreement over every text), and scored against the test labels (accuracy). Pass --run a fully
trained run (e.g. one of bench/train_speed.py's) for an accuracy that means something; the default few-step run
only shows speed.

Run (from the repository root):
    python bench/predict_speed.py --onnx     # writes bench/results/predict_speed.md
    python bench/predict_speed.py --run TINY_RUN --onnx --limit 200 --max-chars 200 --repeats 1 --out /tmp/p.md
                                              # checks the script quickly
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import common

AG = common.DATA / "ag_news"


def train_run(work: Path, steps: int) -> Path:
    from loraclf.config import load_config
    from loraclf.training import train

    cfg = load_config(None, [
        "model.name_or_path=packaged:minilm-l6", f"data.train={AG / 'train.csv'}", f"data.validation={AG / 'val.csv'}",
        "data.label_names=[World, Sports, Business, Sci/Tech]", f"train.max_steps={steps}",
        "train.mixed_precision=fp32", f"eval.eval_steps={steps}", "output.report=false", f"output.dir={work}",
        "output.run_name=minilm", "output.overwrite=true",
    ])
    return Path(train(cfg, quiet=True).run_dir)


def test_labels(run: Path, names: list[str], n: int):
    """The first n AG News test labels as the model's label ids (the run's data.label_names name the integers)."""
    import numpy as np
    import pandas as pd
    import yaml

    given = yaml.safe_load((run / "config.yaml").read_text())["data"].get("label_names")
    raw = pd.read_csv(AG / "test.csv")["label"].tolist()[:n]
    return np.array([names.index(given[int(v)] if given else str(v)) for v in raw])


def int8_verdict(rows: list, bf16_name: str, fp32_name: str, auto_row: str) -> str:
    """Issue 19's int8 target: >= 1.5x the bf16 path's texts/s, test accuracy within 0.3 points of it, for the int8
    engine loraclf picks on this CPU with no flags (auto). Without native bf16 the bf16 path is emulated (not run
    here), so the fp32 path stands in for it, which is said."""
    by = {r[0]: r for r in rows}
    base = by.get(bf16_name) or by[fp32_name]
    int8 = by[auto_row]
    speed, drop = int8[2] / base[2], (base[7] - int8[7]) * 100
    ok = speed >= 1.5 and drop <= 0.3
    which = "bf16" if base[0] == bf16_name else "fp32 (standing in for bf16: no native bf16 on this CPU)"
    return (f"**int8 target** (>= 1.5x the {which} path's texts/s, test accuracy within 0.3 points), for the engine "
            f"`--int8-engine auto` picks here ({auto_row.split(', int8, ', 1)[1]}): "
            f"{speed:.2f}x, accuracy {int8[7]:.2%} against {base[7]:.2%} ({-drop:+.2f} points): "
            f"**{'PASS' if ok else 'MISS'}**.")


def onnx_contenders(export: Path, work: Path, im, texts: list[str], batch_size: int) -> list:
    """onnxruntime on the export's model.onnx, fp32 and dynamically quantized to int8, in loraclf's batches."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from loraclf.infer.forward import token_batches

    int8 = work / "model.int8.onnx"
    quantize_dynamic(str(export / "model.onnx"), str(int8), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch's contenders
    sessions = {p: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for p in (export / "model.onnx", int8)}
    names = [i.name for i in sessions[int8].get_inputs()]
    enc = im.tokenizer(texts, truncation=True, max_length=im.max_length)
    order = token_batches(np.array([len(x) for x in enc["input_ids"]]), batch_size, batch_size * im.max_length)
    pad = {"input_ids": im.tokenizer.pad_token_id or 0}

    def labels(sess):
        out = np.zeros(len(texts), dtype=np.int64)
        for idx in order:
            width = max(len(enc["input_ids"][i]) for i in idx)
            feed = {k: np.full((len(idx), width), pad.get(k, 0), dtype=np.int64) for k in names}
            for j, i in enumerate(idx):
                for k in names:
                    feed[k][j, :len(enc[k][i])] = enc[k][i]
            out[idx] = sess.run(["logits"], feed)[0].argmax(-1)
        return out

    return [(f"onnxruntime {what}, by hand (model.onnx{', quantize_dynamic defaults' if p == int8 else ''})",
             lambda s=sess: labels(s)) for what, (p, sess) in zip(("fp32", "int8"), sessions.items())]


def _agreement(preds: dict, name: str, other: str):
    return float((preds[name] == preds[other]).mean()) if other in preds else None


FP32 = "loraclf predict, fp32"
BF16 = "loraclf predict, bf16 autocast (--precision auto)"
TORCH_INT8 = "loraclf predict, int8, torch engine (model.int8.safetensors)"
ORT_INT8 = "loraclf predict, int8, onnxruntime engine (model.int8.onnx: fused, per-channel)"
WHOLE = "loraclf predict, whole command in-process (load + read + predict + write, fp32)"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="an existing run folder to export (default: train MiniLM for --train-steps)")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--work", default="/tmp/loraclf-bench-predict")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N test texts")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-chars", type=int, default=None, help="cut texts (for checking the script on a tiny model)")
    ap.add_argument("--onnx", action="store_true", help="add the onnxruntime rows: loraclf's onnxruntime int8 engine "
                    "and hand-written onnxruntime fp32 and int8 (needs loraclf[export])")
    ap.add_argument("--out", default=str(common.RESULTS / "predict_speed.md"))
    return ap.parse_args()


def prepare(args):
    """The run (trained here or given), its `export --quantize int8` folder, the texts and the test csv they are in."""
    import json

    import pandas as pd
    import yaml

    from loraclf.publish.export import export_run

    work = Path(args.work)
    t0 = time.perf_counter()
    run = Path(args.run) if args.run else train_run(work / "runs", args.train_steps)
    train_s = time.perf_counter() - t0
    if args.run:
        args.train_steps = (yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"]
                            or json.loads((run / "metrics.json").read_text())["global_step"])
    export = Path(export_run(run, work / "export", onnx=args.onnx, overwrite=True, quantize="int8"))
    test_csv = AG / "test.csv"
    texts = pd.read_csv(test_csv)["text"].tolist()
    if args.limit or args.max_chars:
        texts = [t[:args.max_chars] for t in texts[:args.limit]]
        test_csv = work / "test_subset.csv"
        pd.DataFrame({"text": texts}).to_csv(test_csv, index=False)
    return run, train_s, export, texts, test_csv


def build_contenders(args, export: Path, texts: list[str], test_csv: Path):
    """(name, fn) pairs, each fn returning one label id per text; the models they use, loaded and warmed up."""
    import numpy as np
    import pandas as pd
    from transformers import pipeline

    from loraclf.infer.engine import load_inference_model
    from loraclf.infer.files import predict_file
    from loraclf.infer.forward import predict_texts

    clf = pipeline("text-classification", model=str(export), device="cpu")
    im = load_inference_model(export, int8_engine="torch")
    names = [im.id2label[i] for i in range(len(im.id2label))]
    models = {FP32: (im.model, "fp32"), TORCH_INT8: (im.int8_model(), "fp32")}
    if common.bf16_supported():
        models[BF16] = (im.model, "bf16")
    if args.onnx:
        models[ORT_INT8] = (load_inference_model(export, int8_engine="onnxruntime").int8_model(), "fp32")

    def ours(model, precision):
        return lambda: predict_texts(model, im.tokenizer, texts, args.batch_size, im.max_length, precision).argmax(-1)

    def ours_file():
        out = Path(args.work) / "predictions.csv"
        predict_file(export, test_csv, out, fmt="full", batch_size=args.batch_size, quiet=True)
        return pd.read_csv(out)["label_id"].to_numpy()

    contenders = [("pipeline (defaults: batch_size=1)", lambda: [names.index(r["label"]) for r in clf(texts)]),
                  (f"pipeline (batch_size={args.batch_size})",
                   lambda: [names.index(r["label"]) for r in clf(texts, batch_size=args.batch_size)])]
    contenders += [(name, ours(*models[name])) for name in (FP32, BF16, TORCH_INT8, ORT_INT8) if name in models]
    contenders.append((WHOLE, ours_file))
    if args.onnx:
        contenders += onnx_contenders(export, Path(args.work), im, texts, args.batch_size)
    warm = texts[:64]  # first calls allocate and pick kernels
    clf(warm)
    clf(warm, batch_size=args.batch_size)
    for model, precision in models.values():
        predict_texts(model, im.tokenizer, warm, args.batch_size, im.max_length, precision)
    return contenders, im, names, np.array([len(x) for x in im.tokenizer(texts)["input_ids"]])


def time_rounds(contenders, repeats: int):
    """Each contender's times and last predictions, alternating within rounds; and the CPU others used meanwhile."""
    import numpy as np

    times = {name: [] for name, _ in contenders}
    preds = {}
    meter = common.LoadMeter()
    for r in range(repeats):
        for name, fn in contenders:
            start = time.perf_counter()
            preds[name] = np.asarray(fn())
            times[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return times, preds, meter.read()


def table_rows(contenders, times, preds, truth, n: int) -> list:
    base, fair = contenders[0][0], contenders[1][0]
    rows = []
    for name, _ in contenders:
        med = statistics.median(times[name])
        agree = [_agreement(preds, name, other) for other in (base, FP32, BF16)]
        rows.append((name, med, n / med, statistics.median(times[base]) / med, statistics.median(times[fair]) / med,
                     agree, times[name], float((preds[name] == truth).mean())))
    return rows


def header(args, run, train_s, im, tokens, load: common.Load) -> list[str]:
    import torch
    import transformers

    n = len(tokens)
    return [
        "# Prediction throughput: `loraclf predict` vs `transformers.pipeline`",
        "",
        *common.machine_lines([load], what="timed rounds"),
        f"- {torch.get_num_threads()} torch threads; transformers {transformers.__version__}.",
        f"- Model: packaged MiniLM-L6 (BERT, 6 layers, hidden 384), LoRA trained {args.train_steps} steps"
        f"{f' (run {run})' if args.run else f' ({train_s:.0f} s)'}, merged and exported with `loraclf export "
        f"--quantize int8` (fp32 weights and both engines' int8 files). Every contender uses that exported folder.",
        f"- Data: {n} texts of `../shared/data/ag_news/test.csv`, {tokens.mean():.0f} tokens on average, "
        f"{int((tokens > im.max_length).sum())} longer than loraclf's max_length {im.max_length} (cut by loraclf, "
        f"not by the pipeline, which does not truncate by default): hence the agreement column.",
        f"- Timing: median of {args.repeats} rounds, contenders alternating within each round, after one warm-up call.",
        f"- Command: `{common.command('predict_speed.py')}`",
        "",
        *common.md_table(["contender", "median s", "texts/s", "vs pipeline defaults",
                          f"vs pipeline batch {args.batch_size}", "same labels as pipeline", "as loraclf fp32",
                          "as loraclf bf16", "test accuracy", "rounds (s)"], align="l" + "r" * 8 + "l"),
    ]


def int8_lines(rows, saved_same: bool, n: int) -> list[str]:
    from loraclf.infer.int8 import auto_engine

    by = {r[0]: r for r in rows}
    auto = ORT_INT8 if auto_engine() == "onnxruntime" and ORT_INT8 in by else TORCH_INT8
    ratios = "; ".join(f"{name.split(', int8, ', 1)[1].split(' (')[0]}: {by[name][2] / by[FP32][2]:.2f}x loraclf "
                       f"fp32's texts/s" + (f", {by[name][2] / by[BF16][2]:.2f}x bf16's" if BF16 in by else "")
                       for name in (TORCH_INT8, ORT_INT8) if name in by)
    return ["", f"torch int8 saved by `export --quantize int8` and read back by `load_quantized`: "
            f"{'the same' if saved_same else '**NOT the same**'} outputs as the in-memory int8 model "
            f"(`quantize_model`) on all {n} texts. int8 engines: {ratios}. `--int8-engine auto` picks "
            f"{auto_engine()} on this CPU" + ("" if auto in by or auto_engine() == "torch" else
                                              " (not run here: pass --onnx)") + ".",
            "", int8_verdict(rows, BF16, FP32, auto)]


def result_lines(rows) -> list[str]:
    ours_fp32 = next(r for r in rows if r[0] == FP32)
    best = max((r for r in rows if r[0].startswith("loraclf predict,") and r[0] != WHOLE), key=lambda r: r[2])
    target = ours_fp32[3] >= 2.0
    return [
        "",
        "Expected before measuring (written with the code, kept to compare): against the default pipeline "
        "(batch_size=1) loraclf should be >= 3x from batching alone (larger matrix products, less per-call Python); "
        "against the batch-64 pipeline 1.3-2x from length sorting (unsorted AG News batches pad to their longest text, "
        "up to ~5x the mean length) and the token budget; bf16 autocast on a CPU with avx512_bf16 but no AMX "
        "between 0.8x and 1.5x of fp32 (the casts may eat the gain); padding straight into arrays instead of "
        "tokenizer.pad under 5%. The onnxruntime int8 engine (fused attention/GELU/LayerNorm, per-channel scales), "
        "written 2026-12-04 before this run: 1.35-1.45x bf16 on a Zen 4 (VNNI, no AMX), at most 0.1 points of test "
        "accuracy from fp32, and >= 99% the same labels as fp32.",
        "",
        f"**Result:** `loraclf predict` (fp32) runs at {ours_fp32[3]:.2f}x the default pipeline and "
        f"{ours_fp32[4]:.2f}x the batch-64 pipeline; the fastest loraclf setting ({best[0].split(', ', 1)[1]}) at "
        f"{best[3]:.2f}x and {best[4]:.2f}x. Target (>= 2x the pipeline): "
        f"{'met' if target else 'MISSED'} in fp32{'' if target else ' (see the bf16 row)'}.",
        "",
    ]


def main() -> None:
    import numpy as np

    from loraclf.infer.forward import predict_texts
    from loraclf.infer.int8 import quantize_model

    args = parse_args()
    run, train_s, export, texts, test_csv = prepare(args)
    contenders, im, names, tokens = build_contenders(args, export, texts, test_csv)
    truth = test_labels(run, names, len(texts))
    times, preds, load = time_rounds(contenders, args.repeats)
    rows = table_rows(contenders, times, preds, truth, len(texts))

    def int8_outputs(model):
        return predict_texts(model, im.tokenizer, texts, args.batch_size, im.max_length, "fp32")

    saved_same = bool(np.array_equal(int8_outputs(im.int8_model()), int8_outputs(quantize_model(im.model))))
    lines = header(args, run, train_s, im, tokens, load)
    for name, med, tps, r_base, r_fair, agree, ts, acc in rows:
        shown = " | ".join("-" if a is None else f"{a:.2%}" for a in agree)
        lines.append(f"| {name} | {med:.2f} | {tps:.0f} | {r_base:.2f}x | {r_fair:.2f}x | {shown} | {acc:.2%} | "
                     f"{', '.join(f'{t:.2f}' for t in ts)} |")
    lines += int8_lines(rows, saved_same, len(texts)) + result_lines(rows)
    common.write_text(Path(args.out), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
