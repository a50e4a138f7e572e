"""One evaluation task of a parallel local comparison, in a process of its own (so it takes only its share of the
cores): `python -m workbench.comparison.evaljob JOB.pkl`, where the controller pickled what
`evaluation.evaluation_job` needs. A WorkbenchError ends it with its one-line message and exit code 1."""

from __future__ import annotations

import pickle
import sys

from workbench.errors import WorkbenchError


def main(path: str) -> int:
    from workbench.comparison.evaluation import evaluation_job

    with open(path, "rb") as f:
        comparison, seed, runs, kind, name = pickle.load(f)
    try:
        evaluation_job(comparison, seed, runs, kind, name)
    except WorkbenchError as exc:
        print(f"error: {str(exc).removeprefix('evaluation: ')}", flush=True)  # the report adds `evaluation:`
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
