from pathlib import Path

HELP = "write Figure 2 (loss and PCK curves) and Table 1 (best epochs) for a training run"
DESCRIPTION = (
    HELP + ", from RUN_DIR/metrics.csv and, when present, RUN_DIR/test_eval.json (`hgpose evaluate --out`). "
    "Files go into RUN_DIR: figure2.png/.pdf, table1.md/.csv, report.json."
)


def add_arguments(parser):
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run directory")


def run(args):
    from hgpose.report import write_report

    outputs = write_report(args.run_dir)
    print(outputs["table1.md"].read_text(encoding="utf-8"))
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0
