"""``python -m pyflm.models``: every model's parameter count beside its paper's."""

from __future__ import annotations

import sys

from pyflm.models import parameter_table


def main(argv=None) -> int:
    rows = parameter_table()
    print("| model | parameters (pyflm) | parameters (paper) | equal |")
    print("|---|---:|---:|---|")
    for name, ours, paper in rows:
        same = "" if paper is None else ("yes" if ours == paper else f"no ({ours - paper:+,})")
        print(f"| {name} | {ours:,} | {'' if paper is None else f'{paper:,}'} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
