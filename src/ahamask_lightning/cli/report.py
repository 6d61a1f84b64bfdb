"""``ahamask report RUN_DIR... [--format md|csv] [-o FILE]``: test results as a table."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.report import collect, to_csv, to_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="directories holding test_metrics.json")
    parser.add_argument("--format", choices=["md", "csv"], default="md", help="Markdown table or CSV (default: md)")
    parser.add_argument("-o", "--out", help="write to this file instead of printing")


def run(args: argparse.Namespace) -> int:
    columns, rows = collect(args.runs)
    text = to_markdown(columns, rows) if args.format == "md" else to_csv(columns, rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
