"""What both benchmark runners (benches/run.py, benches/net/run.py) share."""

import argparse
import importlib.metadata
import platform


def csv(value, valid):
    """argparse type: a comma-separated list of names from `valid`."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in names if s not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(valid)}")
    return names


def version(name):
    """What ran: the interpreter for asyncio, else the package's version."""
    if name == "asyncio":
        return "CPython " + platform.python_version()
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name
