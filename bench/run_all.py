"""``make bench``: run every benchmark, print its numbers, and write them to docs/results.md.

Each benchmark module exposes ``main() -> dict``. A result may carry ``title`` (str), ``table``
(list of row dicts), ``notes`` (str); any other keys are shown as a two-column table. Each
benchmark owns one marked section of docs/results.md, so hand-written sections survive a re-run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import re
import sys
import time
from pathlib import Path

#: run by ``make bench`` (minutes in all)
BENCHMARKS = {
    "sim": "bench.sim_bench",
    "edge": "bench.edge_bench",
    "transport": "bench.transport_bench",
    "learner": "bench.learner_bench",
}
#: learning experiments, run only when named (``python -m bench.run_all offline``): over an hour on 2 cores
LONG_BENCHMARKS = {
    "offline": "bench.offline_results",
}
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(name: str, result: dict) -> str:
    lines = [f"### {result.get('title', name)}", ""]
    table = result.get("table")
    if not table:
        table = [
            {"metric": k, "value": v}
            for k, v in result.items()
            if k not in ("title", "notes", "table", "command")
        ]
    cols = list(dict.fromkeys(k for row in table for k in row))
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |" for row in table]
    if result.get("notes"):
        lines += ["", str(result["notes"])]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines += [
        "",
        f"_Measured {stamp} on {platform.node() or 'this machine'} ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}; re-run with `{result.get('command', f'python -m bench.run_all {name}')}`._",
    ]
    return "\n".join(lines)


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = (
        path.read_text()
        if path.exists()
        else "# Results\n\nNumbers measured by `make bench` and the experiment scripts.\n"
    )
    block = f"{begin}\n{markdown}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = {**BENCHMARKS, **LONG_BENCHMARKS}
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default: {list(BENCHMARKS)}; long, only when named: {list(LONG_BENCHMARKS)})",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(known)}")
    args.names = args.names or list(BENCHMARKS)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    failed = []
    for name in args.names:
        print(f"\n==> bench {name}", flush=True)
        try:
            result = importlib.import_module(known[name]).main()
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            logging.exception("benchmark %s failed", name)
            failed.append(f"{name}: {exc}")
            continue
        print(json.dumps(result, indent=2, default=str))
        write_section(name, to_markdown(name, result))
    print(f"\nresults written to {RESULTS}")
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
