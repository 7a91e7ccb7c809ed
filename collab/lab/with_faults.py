"""Run a peer script with faults injected on purpose (collab/lab/faults.py): the only way a peer gets faults.

    python -m collab.lab.with_faults --faults "nonfinite_loss@20+12,nonfinite_grads@40+2" \\
        albert/run_trainer.py --initial_peers ... [the script's own flags]

parses the plan, installs it in this process (see collab.lab.faults), then runs SCRIPT as __main__ with
sys.argv = [SCRIPT, *ARGS], exactly as `python SCRIPT ARGS...` would. The script itself has no fault code.
"""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Optional

from collab.errors import UserError
from collab.lab.faults import KINDS, FaultPlan, install


def build_parser() -> argparse.ArgumentParser:
    kinds = "; ".join(f"{kind.name} ({kind.keyed_by}): {kind.help}" for kind in KINDS.values())
    parser = argparse.ArgumentParser(prog="python -m collab.lab.with_faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", required=True, metavar="SPEC",
                        help=f"comma-separated KIND@START+COUNT items (COUNT steps from START). Kinds: {kinds}")
    parser.add_argument("script", metavar="SCRIPT", help="the peer script to run, e.g. albert/run_trainer.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        plan = FaultPlan.parse(args.faults)
        script = Path(args.script)
        if not script.is_file():
            raise UserError(f"no such script: {args.script}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    install(plan)
    sys.argv = [str(script), *args.args]
    sys.path.insert(0, str(script.resolve().parent))  # as `python SCRIPT` would have it
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
