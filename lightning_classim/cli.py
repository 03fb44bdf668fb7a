"""The ``classim`` command line (``python -m lightning_classim``): demo, report, explore, compare, export.

Exit codes: 0 on success, 2 on bad usage (argparse), 1 when a run cannot be used (a missing folder, an empty
run, corrupt files, runs with different class counts); then one line says why, with no traceback. Nothing that
is read is modified.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

DEMO_DESCRIPTION = (
    "Train a small classifier on generated data with a known class hierarchy (48 classes: 8 superclasses of 2 "
    "subclasses, one near-duplicate pair planted) and log its class-similarity structure to TensorBoard, epoch by "
    "epoch; then print what the last epoch shows against the known hierarchy."
)

EXAMPLES = {
    "demo": (
        "examples:\n  classim demo --out classim_demo --epochs 12\n  classim demo --picture docs/demo_structure.png"
    ),
    "report": (
        "examples:\n  classim report lightning_logs/version_0/classim\n  classim report classim_demo --out report/"
    ),
    "compare": (
        "examples:\n  classim compare runs/a/classim runs/b/classim\n"
        "  classim compare runs/a runs/b runs/c --epoch 9 --png compare.png\n"
        "  classim compare runs/a runs/b --json > compare.json\n"
        "  classim compare runs/a runs/b --html a_vs_b.html"
    ),
    "explore": (
        "examples:\n  classim explore lightning_logs/version_0/classim        # -> <run>/explorer.html\n"
        "  classim explore runs/a --out a.html"
    ),
    "export": (
        "examples:\n  classim export runs/a/classim --format newick > tree.nwk\n"
        "  classim export runs/a/classim --format json --epoch 4 --out tree.json"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``classim`` argument parser with its subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="classim",
        description="Class-similarity structure of classifiers (lightning_classim): a demo, and reports, comparisons "
        "and exports of the runs that ClassSimilarityCallback wrote to disk.",
        epilog="Run `classim <command> --help` for the options and examples of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,report,explore,compare,export}")
    sub.required = True
    p = sub.add_parser("demo", help="train a small model and log its structure", description=DEMO_DESCRIPTION,
                       epilog=EXAMPLES["demo"], formatter_class=raw)  # fmt: skip
    p.add_argument("--out", default="classim_demo", help="TensorBoard log folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=2, help="random seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--picture", help="also write the structure forming (four epochs side by side) to this PNG file")
    p = sub.add_parser("report", help="report of one run: metrics, heatmaps, group changes",
                       description="Write a report of one run: the structure scalars over epochs, the heatmaps of all "
                       "epochs in the last epoch's order (grid and animated GIF), the classes that changed group, "
                       "and the final group summary.", epilog=EXAMPLES["report"], formatter_class=raw)  # fmt: skip
    p.add_argument("run", help="a run folder (the callback's save_dir), or a folder holding exactly one")
    p.add_argument("--out", help="report folder (default: <run>/report)")
    p = sub.add_parser("explore", help="the interactive explorer of a run, as one HTML file",
                       description="Write the interactive class-similarity explorer of a run: one self-contained "
                       "HTML file (no network) with the heatmap to zoom down to single cells, the names and r of the "
                       "cell under the pointer, each class's nearest classes and groups, the levels, the pairs worth "
                       "a look, split and failed groups, orderings, and a slider over the epochs.",
                       epilog=EXAMPLES["explore"], formatter_class=raw)  # fmt: skip
    p.add_argument("run", help="a run folder (the callback's save_dir), or a folder holding exactly one")
    p.add_argument("--out", help="HTML file (default: <run>/explorer.html)")
    p = sub.add_parser("compare", help="agreement between the structures of runs",
                       description="Compare runs' class structures, each against the first: correlation of the "
                       "matrices, adjusted Rand index of the groups, correlation of the trees' cophenetic distances, "
                       "and the classes whose nearest neighbours differ most.", epilog=EXAMPLES["compare"],
                       formatter_class=raw)  # fmt: skip
    p.add_argument("runs", nargs="+", help="two run folders or more")
    p.add_argument("--epoch", type=int, help="epoch to compare (default: each run's last)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--png", help="also write the heatmaps side by side, in the first run's order, to this PNG file")
    p.add_argument("--neighbours", type=int, default=5, help="nearest neighbours compared per class")
    p.add_argument("--html", help="also write the explorer of the first two runs in one order, with a difference "
                   "view, to this HTML file")  # fmt: skip
    p = sub.add_parser("export", help="the learned class hierarchy as JSON or Newick",
                       description="Export a run's learned class hierarchy (the linkage tree, class names as "
                       "leaves) as JSON or Newick.", epilog=EXAMPLES["export"], formatter_class=raw)  # fmt: skip
    p.add_argument("run", help="a run folder")
    p.add_argument("--format", choices=["json", "newick"], default="json")
    p.add_argument("--epoch", type=int, help="epoch (default: the last)")
    p.add_argument("--out", help="file to write (default: standard output)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``classim <command> ...`` and return the exit code."""
    import warnings

    from lightning_classim.runs import RunError, RunWarning

    parser = build_parser()
    args = parser.parse_args(argv)

    def say(message: Warning | str, category: type[Warning], *rest: object, **kw: object) -> None:
        print(f"classim {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", RunWarning)
            warnings.showwarning = say  # type: ignore[assignment]
            return _run(args, parser)
    except (RunError, ValueError) as err:  # a run that cannot be used, or runs that cannot go together
        print(f"classim {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # an output path that is a file, a full disk, ...
        if isinstance(err, BrokenPipeError):  # `classim ... | head`: the reader has gone; say nothing more
            _silence_stdout()
            return 1
        print(f"classim {args.command}: error: {err.strerror or err}: {err.filename or ''}".rstrip(": "),
              file=sys.stderr)  # fmt: skip
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush does not raise again on the closed pipe."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - no real file descriptor (e.g. captured output)
        pass


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """One command, its errors left to :func:`main`."""
    from lightning_classim._files import atomic_write
    from lightning_classim.report import write_report
    from lightning_classim.runs import compare_runs, compare_table, export_tree

    if args.command == "demo":
        if args.epochs < 1:
            parser.error(f"--epochs must be at least 1, got {args.epochs}")
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            raise ValueError(
                "the demo logs to TensorBoard, which is not installed. Install it with the package's extra: "
                'pip install "lightning_classim[tensorboard]"'
            )
        from lightning_classim import demo  # imports torch and Lightning: only for the demo

        return demo.run_cli(args.out, args.epochs, args.seed, progress=not args.no_progress, picture=args.picture)
    if args.command == "report":
        folder = write_report(args.run, args.out)
        print(f"report written to {folder}:")
        for name in ("report.md", "metrics.png", "heatmaps.png", "evolution.gif", "changes.json", "report.json"):
            print(f"  {folder / name}")
        return 0
    if args.command == "explore":
        from lightning_classim.explorer import write_explorer

        path = write_explorer(args.run, args.out)
        print(f"explorer written to {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
        return 0
    if args.command == "compare":
        if len(args.runs) < 2:
            parser.error("compare needs two runs or more")
        if args.neighbours < 1:
            parser.error(f"--neighbours must be at least 1, got {args.neighbours}")
        report = compare_runs(args.runs, epoch=args.epoch, out=args.png, neighbours=args.neighbours)
        print(json.dumps(report, indent=1) if args.json else compare_table(report))
        if args.html:
            from pathlib import Path

            from lightning_classim.explorer import compare_html

            target = Path(args.html)
            atomic_write(target, compare_html(args.runs[0], args.runs[1], args.epoch).encode("utf-8"))
            print(f"explorer of {args.runs[0]} and {args.runs[1]} written to {target}", file=sys.stderr)
        return 0
    if args.command == "export":
        text = export_tree(args.run, args.format, args.epoch)
        if args.out:
            from pathlib import Path

            atomic_write(Path(args.out), (text + "\n").encode("utf-8"))
            print(f"{args.format} tree written to {args.out}")
        else:
            print(text)
        return 0
    return 2  # pragma: no cover
