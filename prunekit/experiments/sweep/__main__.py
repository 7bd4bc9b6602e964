"""``python -m prunekit.experiments.sweep --write-comparison-grids``: regenerate the packaged grids."""
from prunekit.experiments.comparison import write_comparison_grids


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m prunekit.experiments.sweep")
    ap.add_argument("--write-comparison-grids", action="store_true",
                    help="regenerate prunekit/experiments/grids/comparison-*.yaml from profiles.py")
    a = ap.parse_args(argv)
    if a.write_comparison_grids:
        for p in write_comparison_grids():
            print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
