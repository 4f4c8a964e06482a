"""``python -m openood_ext.pipelines.ad.cell_process RUN_DIR CLASS_JSON SEED``: one AD cell as its own process (see
:mod:`openood_ext.pipelines.ad.jobs`). Exit 0 done, 2 a user error (one line on stderr), 130 interrupted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...errors import OpenOODError
from ...utils.interrupts import RunInterrupted, graceful_interrupts
from .jobs import run_one_cell


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m openood_ext.pipelines.ad.cell_process RUN_DIR CLASS_JSON SEED", file=sys.stderr)
        return 2
    try:
        with graceful_interrupts():
            run_one_cell(Path(argv[0]), json.loads(argv[1]), int(argv[2]))
    except OpenOODError as exc:
        print(f"openood-ext: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, RunInterrupted) as exc:
        print(f"openood-ext: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
