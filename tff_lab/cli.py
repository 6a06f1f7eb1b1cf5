"""``tff-lab`` command line: thin parsing over the library.

Each subcommand lives beside the code it drives (``<package>/command.py`` with a
``register(subparsers)`` function) so this module stays small and imports no
TensorFlow until a command runs. Every :class:`~tff_lab.errors.UserError` becomes a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
from typing import Any, Callable, Optional

# Subcommand modules, in --help order.
COMMAND_MODULES = [
    "tff_lab.training.command",  # run
    "tff_lab.export.command",  # export, predict
    "tff_lab.distributed.command",  # train-dist
    "tff_lab.deploy.command",  # k8s render, sweep
    "tff_lab.privacy.command",  # privacy epsilon, privacy noise
]


def _quiet_tf_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF 2.14 logs CUDA-plugin errors at import
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tff-lab",
        description="Private federated learning on TensorFlow Federated: run experiments, account privacy, "
        "export to TFLite, train on a cluster.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    _quiet_tf_logs()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # argparse's own refusals: usage + one line, exit 2
    except SystemExit as e:  # --help (0) or a refused flag (2): the same code, returned to callers in Python
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return run_command(args.func, args)


def run_command(func: Callable[[Any], Any], args: Any) -> int:
    """The one error boundary of every command: whatever happens below becomes an exit code and at
    most one line on stderr. Exit 2: the user's input, files or code (their model builder, data
    loader, aggregator) is at fault, named; 1: a bug of tff-lab's own, with a please-report line;
    3/75/143: diverged / worker lost / preempted; 130: interrupted. ``TFF_LAB_DEBUG=1`` re-raises
    (the traceback) instead."""
    from tff_lab.errors import Preempted, TrainingDiverged, UserError, WorkerLost

    try:
        return int(func(args) or 0)
    except UserError as e:
        return _fail(2, f"error: {e}", e)
    except Preempted as e:
        return _fail(e.exit_code, f"preempted: {e}", e)
    except TrainingDiverged as e:
        return _fail(e.exit_code, f"diverged: {e}", e)
    except WorkerLost as e:
        return _fail(e.exit_code, f"worker lost: {e}", e)
    except KeyboardInterrupt as e:
        return _fail(130, "interrupted", e)
    except SystemExit as e:
        frame = _user_frame(e)
        if frame is None:
            raise
        return _fail(2, f"error: user code: {frame} called sys.exit({e.code!r}) while tff-lab was running it", e)
    except BaseException as e:  # noqa: BLE001 - this is the boundary
        return _fail(*_classify(e), e)


def _fail(code: int, line: str, exc: BaseException) -> int:
    if os.environ.get("TFF_LAB_DEBUG") == "1":
        raise exc
    print(f"tff-lab: {_one_line(line)}", file=sys.stderr)
    return code


def _one_line(text: str, limit: int = 600) -> str:
    first = " ".join(str(text).split("\n", 1)[0].split())
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _library_roots() -> tuple[str, ...]:
    import sysconfig

    here = os.path.dirname(os.path.abspath(__file__))
    roots = {here, os.path.dirname(os.__file__)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            roots.add(sysconfig.get_paths()[key])
    roots.update(p for p in sys.path if "site-packages" in p or "dist-packages" in p)
    return tuple(os.path.realpath(r) + os.sep for r in roots if r)


def _user_frame(exc: BaseException) -> Optional[str]:
    """``file:line in function`` of the deepest frame of the traceback that is neither tff_lab nor an
    installed library nor Python's own: the user's code, on the stack when it failed."""
    import traceback

    roots = _library_roots()
    found = None
    for fs in traceback.extract_tb(exc.__traceback__):
        path = os.path.realpath(fs.filename) if fs.filename and not fs.filename.startswith("<") else fs.filename
        if not path or path.startswith("<frozen") or path.startswith(roots):
            continue
        found = f"{os.path.basename(fs.filename)}:{fs.lineno} in {fs.name}"
    return found


def _classify(e: BaseException) -> tuple[int, str]:
    name = type(e).__name__
    msg = _one_line(str(e) or name, 400)
    frame = _user_frame(e)
    if frame is not None:  # the user's code raised (or made a library raise): their part, their error
        return 2, f"error: user code: {frame} raised {name}: {msg}"
    if isinstance(e, OSError) and (e.filename or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
        where = e.filename or "disk"
        return 2, f"error: {where}: {os.strerror(e.errno) if e.errno else msg}"
    if isinstance(e, MemoryError) or name == "ResourceExhaustedError":
        return 2, (
            f"error: out of memory ({name}): the input or settings ask for more memory than this machine "
            "has; use smaller data, model or cohort"
        )
    where = ""
    import traceback

    tb = traceback.extract_tb(e.__traceback__)
    if tb:
        last = tb[-1]
        where = f" at {os.path.basename(last.filename)}:{last.lineno}"
    return 1, (
        f"internal error: {name}: {msg}{where}. This is a bug in tff-lab, not in your input: please report "
        "it with the command you ran (TFF_LAB_DEBUG=1 prints the traceback)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
