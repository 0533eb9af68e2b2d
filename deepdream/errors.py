"""How every script talks to the user: notices on stderr, and on a mistake one line, a non-zero
exit, never a traceback.

Errors a user can cause derive from ``DreamError`` (or are the model zoo's ``WeightsError`` /
``UnknownLayerError``); their message is a single line naming the problem and the way out.
``exit_code`` turns them into ``error: ...`` on stderr and an exit status; every script enters
through ``run_main(main)`` (``if __name__ == "__main__"``), which exits with it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from models import UnknownLayerError, WeightsError

Notify = Callable[[str], None]


def make_notify(quiet: bool) -> Notify:
    """Notices go to stderr as ``deepdream: ...`` lines, unless quiet."""
    def notify(message: str) -> None:
        if not quiet:
            print(f"deepdream: {message}", file=sys.stderr)
    return notify


#: Notices that matter only once a run has worked (which model a dream chose for the user): said after
#: its output, never before an error line, and at most once per ``once`` key on this machine.
_after_success: list[tuple[str, str | None]] = []


def notify_after_success(message: str, *, once: str | None = None, quiet: bool = False) -> None:
    """Say ``message`` when the script ends well (through ``exit_code``); with ``once``, only the first time."""
    if not quiet:
        _after_success.append((message, once))


def _say_after_success() -> None:
    from . import cache

    for message, once in _after_success:
        if once is None or not cache.seen(once):
            print(f"deepdream: {message}", file=sys.stderr)
            if once is not None:
                cache.remember(once)
    _after_success.clear()


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class DreamError(ValueError):
    """Bad input (file, flag, model choice, dataset); the message says what to do instead."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after which something was saved; the message says what and how to continue."""


#: Exceptions whose message is written for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (DreamError, WeightsError, UnknownLayerError)


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def exit_code(main: Callable[[], int | None]) -> int:
    """Run ``main`` and return its exit status, reporting user errors and Ctrl-C on stderr.

    Output files are written atomically, so leaving early never leaves a partial file.
    """
    _after_success.clear()
    try:
        status = main() or EXIT_OK
        if status == EXIT_OK:
            _say_after_success()
        return status
    except KeyboardInterrupt as exc:
        detail = _one_line(exc) if isinstance(exc, Interrupted) else "interrupted; nothing was written"
        print(f"\nerror: {detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`dream.py --list-layers | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except MemoryError:
        print("error: out of memory; lower --max-memory (smaller tiles) or shrink the image with --max-size", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # disk full, permission denied, a path that vanished mid-run
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or _one_line(exc)}{where}; check the path, permissions and free space",
              file=sys.stderr)
        return EXIT_ERROR


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """A script's entry point: ``sys.exit(exit_code(main))``."""
    sys.exit(exit_code(main))
