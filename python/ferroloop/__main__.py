"""Run a program with ferroloop as the asyncio event loop, or watch one.

python -m ferroloop script.py [args...]
python -m ferroloop -m module [args...]
python -m ferroloop top PID [--interval S] [--count N] [--once]
"""

from __future__ import annotations

import runpy
import sys
import warnings


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        "usage: python -m ferroloop (script.py | -m module) [args...]\n"
        "       python -m ferroloop top PID [--interval S] [--count N] [--once]"
    )
    if not argv or argv[0] in ("-h", "--help"):
        print(usage, file=sys.stderr if not argv else sys.stdout)
        raise SystemExit(2 if not argv else 0)
    if argv[0] == "top":
        # NOTE: a script named `top` runs as `python -m ferroloop ./top`.
        from ._top import main as top

        raise SystemExit(top(argv[1:]))

    import asyncio

    from . import EventLoopPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())

    if argv[0] == "-m":
        if len(argv) < 2:
            print(usage, file=sys.stderr)
            raise SystemExit(2)
        module = argv[1]
        sys.argv = [module, *argv[2:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        path = argv[0]
        sys.argv = argv
        # The script's directory comes first on sys.path, as with `python script.py`.
        import os

        sys.path[0] = os.path.dirname(os.path.abspath(path))
        runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main()
