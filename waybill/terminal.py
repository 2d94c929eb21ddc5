"""Where the terminal commands print: rich on a terminal, plain text when piped.

``waybill sla``, ``waybill dlq list``, ``waybill bench`` and the demo of ``waybill up``
show their views through here. On a terminal a view gets colour, box lines, and a
progress display redrawn in place. Piped into a file, ``grep`` or ``awk`` (or with
``NO_COLOR`` or ``TERM=dumb`` set) the same view is plain text: no escape codes, one
line per table row however long, columns apart by blanks, a dashed rule under the
header. ``--json`` never comes here: it prints what it always printed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TextIO, cast

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table

#: piped: rows are never wrapped, so each stays one line for grep and awk
PLAIN_WIDTH = 10_000

#: piped tables: a dashed rule under the header, nothing else drawn
PLAIN_BOX = box.Box(
    "    \n"  # top
    "    \n"  # head
    " -  \n"  # under the header
    "    \n"  # mid
    "    \n"  # between rows
    " -  \n"  # above a footer
    "    \n"  # foot
    "    \n",  # bottom
    ascii=True,
)


def is_plain(stream: IO[str]) -> bool:
    """Whether what goes to ``stream`` must be plain text: it is no terminal, or the
    user asked for no colour (``NO_COLOR``) or has a terminal that cannot move its cursor
    (``TERM=dumb``)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM", "").lower() == "dumb":
        return True
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return True


def console_for(stream: TextIO | None = None) -> Console:
    """A console on ``stream`` (standard output by default), plain when it must be."""
    target = stream if stream is not None else sys.stdout
    if is_plain(target):
        return Console(
            file=target,
            force_terminal=False,
            force_interactive=False,
            color_system=None,
            width=PLAIN_WIDTH,
            soft_wrap=True,
            highlight=False,
            markup=False,
            emoji=False,
        )
    # what the views show is data (order ids, errors): never read as markup or emoji
    return Console(file=target, force_terminal=True, highlight=False, markup=False, emoji=False)


def show(*views: RenderableType, console: Console | None = None) -> None:
    """Print ``views``; plain, each line without the blanks that pad table cells."""
    out = console or console_for()
    if out.is_terminal:
        for view in views:
            out.print(view)
        return
    with out.capture() as captured:
        for view in views:
            out.print(view)
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    out.file.flush()


class ViewTable(Table):
    """A rich table drawn for where it is shown: a rule under the header, columns two
    blanks apart, no edges; on a terminal the rule is a line and the header bold, piped
    it is dashes, so that a row split on blanks gives its cells."""

    def __init__(self, *headers: str) -> None:
        super().__init__(*headers, box=PLAIN_BOX, show_edge=False, padding=(0, 1, 0, 0))

    def _drawn_for(self, console: Console) -> None:
        self.box = box.SIMPLE_HEAD if console.is_terminal else PLAIN_BOX

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        self._drawn_for(console)
        return super().__rich_measure__(console, options)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._drawn_for(console)
        return super().__rich_console__(console, options)


@contextmanager
def live(view: RenderableType, *, console: Console) -> Iterator[Live | None]:
    """``view`` redrawn in place on ``console`` while the block runs (update it through
    the Live given), its last state left on the screen; None when the console is plain,
    where the caller prints lines instead. Meanwhile what is printed, log lines too, goes
    above the display, if it goes to the same terminal (a stream piped elsewhere stays
    where it was)."""
    if not console.is_terminal:
        yield None
        return
    display = Live(
        view,
        console=console,
        auto_refresh=False,  # the caller refreshes, a few times a second at most
        redirect_stdout=not is_plain(sys.stdout),
        redirect_stderr=not is_plain(sys.stderr),
    )
    stderr = sys.stderr
    display.start(refresh=True)
    # log handlers hold the stream they were given: point those on standard error at the
    # display's stand-in (sys.stderr now, if redirected) so a warning does not tear it
    moved: list[logging.StreamHandler[TextIO]] = []
    if sys.stderr is not stderr:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                handler.setStream(cast(TextIO, sys.stderr))
                moved.append(handler)
    try:
        yield display
    finally:
        for handler in moved:
            handler.setStream(stderr)
        display.stop()
