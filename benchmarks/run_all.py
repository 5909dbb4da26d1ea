"""Run every performance benchmark of the project and print one table of ratios.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout S] [--markdown FILE]

Discovers `benchmarks/bench_*.py`, runs each in its own process (`<python> benchmarks/bench_X.py [--quick]`), and
collects the ratio lines it prints: a line is a ratio row when it holds the word "ratio" or a number followed by
`x` / `×` (e.g. `tapo stage / group_norm advantage: 1.07x`, `ratio vs ideal = 0.93`). Each row of the table
carries the command that reproduces it. A benchmark that fails or times out gets a row saying so; the others
still run.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_TIMES = re.compile(rf"(?<![\d.<])(?<!<=)(?<!< )(?<!<= )({_NUMBER})(?:x|×)(?![A-Za-z0-9])")
_RATIO_VALUE = re.compile(rf"\bratio\b\s*[:=]?\s*({_NUMBER})", re.IGNORECASE)
_COLUMNS = re.compile(r"\s{2,}")


@dataclass
class Row:
    bench: str
    label: str
    ratio: str
    command: str


def discover(only: list[str] | None = None) -> list[Path]:
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if only:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in only}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
        missing = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if missing:
            raise SystemExit(f"no benchmark named {sorted(missing)} in {BENCH_DIR} (have bench_*.py: {discover()})")
    return scripts


def parse_ratio_lines(output: str) -> list[tuple[str, str]]:
    """(label, ratio) for every ratio a benchmark's output reports.

    Two shapes: a table whose header has a `ratio` column (columns separated by 2+ spaces; the row's other cells
    and the line above the header make the label), and a line holding `ratio N` or `Nx` (the first one; an `Nx`
    right after `<`/`<=` is a threshold, not a measurement).
    """
    rows: list[tuple[str, str]] = []
    lines = output.splitlines()
    table: tuple[list[str], int, str] | None = None  # header cells, ratio column, title
    for i, raw in enumerate(lines):
        cells = [c for c in _COLUMNS.split(raw.strip()) if c]
        lowered = [c.lower() for c in cells]
        if "ratio" in lowered and len(cells) >= 3:
            title = next((t.strip() for t in reversed(lines[:i]) if t.strip()), "")
            table = (cells, lowered.index("ratio"), title)
            continue
        if table is not None:
            header, col, title = table
            if len(cells) == len(header) and re.fullmatch(rf"{_NUMBER}\s*x?", cells[col]):
                others = [f"{h}={c}" if re.fullmatch(_NUMBER, c) else c for h, c in zip(header, cells, strict=True)]
                others = [o for j, o in enumerate(others) if j != col]
                label = f"{title[:48]}: {' '.join(others)}" if title else " ".join(others)
                rows.append((_clean_label(label), f"{float(cells[col].rstrip('x ')):.3g}x"))
                continue
            table = None
        line = raw.strip()
        ratio = _RATIO_VALUE.search(line)
        times = _TIMES.search(line)
        if ratio is not None:
            rows.append((_clean_label(line[: ratio.start()] or line), f"{float(ratio.group(1)):.3g}x"))
        elif times is not None:
            context = line[times.end() :].split(",")[0]
            rows.append((_clean_label(line[: times.start()] + context), f"{float(times.group(1)):.3g}x"))
    return rows


def _clean_label(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" :=|-,>")
    return text[:140]


def run_one(script: Path, quick: bool, timeout: float, python: str) -> tuple[list[Row], str, float]:
    argv = [python, str(script.relative_to(ROOT))] + (["--quick"] if quick else [])
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *argv[1:]])
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return [Row(script.stem, f"TIMED OUT after {timeout:.0f} s", "-", command)], out, timeout
    elapsed = time.perf_counter() - t0
    output = proc.stdout + ("\n" + proc.stderr if proc.returncode else "")
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:100]
        return [Row(script.stem, f"FAILED (exit {proc.returncode}): {tail}", "-", command)], output, elapsed
    rows = [Row(script.stem, label, ratio, command) for label, ratio in parse_ratio_lines(proc.stdout)]
    if not rows:
        rows = [Row(script.stem, "ran, but printed no ratio line (see its output with -v)", "-", command)]
    return rows, output, elapsed


def table(rows: list[Row]) -> str:
    lines = ["| benchmark | measurement | ratio | reproduce |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.bench} | {r.label.replace('|', '/')} | {r.ratio} | `{r.command}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (small sizes)")
    parser.add_argument("--only", nargs="+", help="run only these benchmarks (e.g. tapo losses)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark before it is stopped")
    parser.add_argument("--markdown", help="also write the table (with date and command) to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo each benchmark's full output")
    args = parser.parse_args(argv)

    scripts = discover(args.only)
    if not scripts:
        print(f"no benchmarks/bench_*.py found in {BENCH_DIR}")
        return 1
    rows: list[Row] = []
    failed = 0
    for i, script in enumerate(scripts, 1):
        print(f"[{i}/{len(scripts)}] {script.name} ...", flush=True)
        bench_rows, output, elapsed = run_one(script, args.quick, args.timeout, sys.executable)
        failed += any(r.ratio == "-" and r.label.startswith(("FAILED", "TIMED OUT")) for r in bench_rows)
        print(f"      {len(bench_rows)} row(s) in {elapsed:.1f} s", flush=True)
        if args.verbose:
            print(output)
        rows.extend(bench_rows)
    result = table(rows)
    print()
    print(result)
    if args.markdown:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        cmd = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
        Path(args.markdown).write_text(f"Measured {stamp} with `{cmd}`.\n\n{result}\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
