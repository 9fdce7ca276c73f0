"""The end of every small entry point's ``main`` (gantrain-generate, -eval, -export, -project): its problems
become one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from gantrain import interrupts
from gantrain.errors import UserError


def run_cli(prog: str, work: Callable[[], None], out: str | None = None,
            cleanup: Callable[[], None] | None = None) -> None:
    """``work()``; a UserError becomes ``PROG: error: SENTENCE`` and exit 2, an OSError the same (``out``: said
    as ``cannot write -o OUT: REASON.``, the output having become unwritable while writing), Ctrl-C the
    interrupted line and exit 130. ``cleanup`` runs whatever stopped the work."""
    try:
        work()
    except UserError as e:
        _fail(prog, str(e))
    except OSError as e:
        _fail(prog, f"cannot write -o {out}: {e.strerror or e}." if out is not None else str(e))
    except KeyboardInterrupt:
        interrupts.stopped(prog)
    finally:
        if cleanup is not None:
            cleanup()


def _fail(prog: str, sentence: str) -> None:
    print(f"{prog}: error: {sentence}", file=sys.stderr)
    sys.exit(2)
