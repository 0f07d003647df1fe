"""Check: which kernel runs the encoders' matmuls on this CPU (AMX or not), and at what rate (issue 19, lever 4).

The issue's Intel Xeon reports `amx_bf16` and `amx_tile`, yet bf16 trained only 1.33x faster than fp32 there. This
script answers, on whatever CPU it runs, the two questions the issue asks:

- which implementation oneDNN dispatches for each matmul: every shape and dtype runs once more in a child process
  under `ONEDNN_VERBOSE=1`, whose `exec` lines name the primitive and its implementation (`brg_matmul:avx512_core_amx`
  is the AMX path; `...avx512_core_bf16` is AVX512-BF16; no line at all means torch did not call oneDNN, e.g. fp32
  goes to MKL/OpenBLAS, and bf16 on a CPU without native bf16 to torch's own emulating kernel);
- the sustained rate of each: the square 2048^3 matmul and a layer's real shapes, `F.linear` with a bias (addmm) as a
  training step calls it, at batch 32 x AG News's mean length (52 tokens) for MiniLM-L6 (hidden 384, feed-forward
  1536) and for MPNet-base / roberta-base (768, 3072).

bf16 is measured directly in bf16 (what autocast hands the kernel). Without native bf16 it is emulated, far slower:
each measurement then runs a single call, and the square shape is skipped.

Run (repository root, on an otherwise idle machine; about a minute):
    python bench/matmul_isa.py                      # bench/results/matmul_isa.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common

TOKENS = 32 * 52  # a training batch of AG News at its mean length
MODELS = {"MiniLM-L6": (384, 1536), "MPNet-base": (768, 3072)}


def shapes() -> dict:
    """name -> (m, k, n): the square matmul, then each model's four linear shapes (q/k/v/out, ffn in, ffn out)."""
    out = {"2048^3": (2048, 2048, 2048)}
    for model, (h, i) in MODELS.items():
        out |= {f"{model} [{TOKENS},{h}]x[{h},{h}]": (TOKENS, h, h), f"{model} [{TOKENS},{h}]x[{h},{i}]": (TOKENS, h, i),
                f"{model} [{TOKENS},{i}]x[{i},{h}]": (TOKENS, i, h)}
    return out


def operands(dtype_name: str, m: int, k: int, n: int):
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    return torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)


def rate(dtype_name: str, mkn: tuple, seconds: float, single: bool) -> float:
    """Sustained FLOP/s of F.linear(x[m,k], w[n,k], b[n]) (2mkn FLOPs a call); one call only when single."""
    import torch.nn.functional as F

    x, w, b = operands(dtype_name, *mkn)
    if not single:
        F.linear(x, w, b)  # the first call allocates and picks a kernel
    count, t0 = 0, time.perf_counter()
    while count == 0 or (not single and time.perf_counter() - t0 < seconds):
        F.linear(x, w, b)
        count += 1
    m, k, n = mkn
    return 2 * m * k * n * count / (time.perf_counter() - t0)


def verbose_child(dtype_name: str, mkn: tuple) -> None:
    """Child: two calls of the matmul with oneDNN's verbose log on (set by the parent's environment)."""
    import torch.nn.functional as F

    x, w, b = operands(dtype_name, *mkn)
    for _ in range(2):
        F.linear(x, w, b)


def parse_verbose(lines: list[str]) -> tuple[list[str], str]:
    """(the matmul / inner-product primitive:implementation pairs that ran, oneDNN's detected ISA) from its log."""
    impls, isa = [], "not reported (oneDNN was not called)"
    for line in lines:
        fields = line.split(",")
        if fields[0] not in ("onednn_verbose", "dnnl_verbose"):
            continue
        if "isa:" in line:
            isa = line.split("isa:", 1)[1].strip()
        if "exec" in fields and "cpu" in fields:
            at = fields.index("cpu")
            name = ":".join(fields[at + 1:at + 3])
            if fields[at + 1] in ("matmul", "inner_product") and name not in impls:
                impls.append(name)
    return impls, isa


def kernels(dtype_name: str, mkn: tuple) -> tuple[list[str], str]:
    """parse_verbose of a child that runs the matmul with oneDNN's verbose log on."""
    cmd = [sys.executable, __file__, "--child", json.dumps([dtype_name, list(mkn)])]
    child = common.run_child(cmd, env={"ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"})
    if not child.ok:
        raise SystemExit(f"{' '.join(cmd)} failed: {child.error()}")
    return parse_verbose(child.stdout.splitlines())


def measure(seconds: float, native_bf16: bool) -> list[dict]:
    rows = []
    for dtype_name in ("fp32", "bf16"):
        emulated = dtype_name == "bf16" and not native_bf16
        for shape, mkn in shapes().items():
            if emulated and shape == "2048^3":
                continue
            impls, isa = kernels(dtype_name, mkn)
            rows.append({"dtype": dtype_name, "shape": shape, "gflops": rate(dtype_name, mkn, seconds, emulated) / 1e9,
                         "kernels": impls, "isa": isa, "amx": any("amx" in k for k in impls), "single": emulated})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict], argv: list[str], threads: int, native_bf16: bool, load: common.Load) -> str:
    import torch

    machine = common.machine()
    flags = machine.flags
    isa = next((r["isa"] for r in rows if not r["isa"].startswith("not reported")), "not reported (oneDNN never ran)")
    amx_flags = {"amx_tile", "amx_bf16"} <= set(flags)
    bf16 = [r for r in rows if r["dtype"] == "bf16"]
    verdict = ("**bf16 matmuls take the AMX path**" if bf16 and all(r["amx"] for r in bf16) else
               "**bf16 matmuls do not take the AMX path**" + ("" if amx_flags else " (this CPU has no AMX)"))
    lines = ["# Matmul kernels and rates: the AMX check (issue 19, lever 4)", "",
             f"- `{common.command('matmul_isa.py', argv)}`.",
             *common.machine_lines([load], what="the measurements", m=machine),
             f"- {threads} torch threads; torch's CPU capability {torch.backends.cpu.get_cpu_capability()}, native "
             f"bf16 (oneDNN's check): {native_bf16}; oneDNN's detected ISA: {isa}.",
             f"- Verdict: {verdict}.", "",
             *common.md_table(["dtype", "shape (F.linear with bias)", "GFLOP/s",
                               "kernel (oneDNN primitive:implementation)", "AMX"])]
    for r in rows:
        kern = ", ".join(f"`{k}`" for k in r["kernels"]) or "not oneDNN (MKL/BLAS or torch's own kernel)"
        lines.append(f"| {r['dtype']}{' (emulated, 1 call)' if r['single'] else ''} | {r['shape']} | "
                     f"{r['gflops']:,.1f} | {kern} | {'yes' if r['amx'] else 'no'} |")
    fp32 = {r["shape"]: r["gflops"] for r in rows if r["dtype"] == "fp32"}
    ratios = [r["gflops"] / fp32[r["shape"]] for r in bf16 if fp32.get(r["shape"])]
    if ratios:
        lines += ["", f"bf16 over fp32 at the same shape: {min(ratios):.2f}x to {max(ratios):.2f}x."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per rate measurement (native dtypes)")
    p.add_argument("--out", type=Path, default=common.RESULTS / "matmul_isa.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        dtype_name, mkn = json.loads(args.child)
        verbose_child(dtype_name, tuple(mkn))
        return 0
    import torch

    native = common.bf16_supported()
    meter = common.LoadMeter()
    rows = measure(args.seconds, native)
    text = report(rows, argv, torch.get_num_threads(), native, meter.read())
    common.write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
