"""The proxy's loggers, which import :mod:`logging` only when a message is written through it.

The shared relay (``shared.py``) is a resident process on every Docker host that uses
portwright-proxy, and each module it imports is memory it keeps: ``logging`` (with ``traceback``,
``string`` and their compiled code) is about 0.45 MB of it. The relay writes its own log file
through a ``sink`` (a function taking one line), so it never imports ``logging`` at all; any other
process (the supervisor's in-process proxy, the Python drop-in) has no sink and gets the standard
``logging.getLogger(name)`` records, with the same names, levels and messages as before.
"""

from __future__ import annotations

from collections.abc import Callable

#: The standard library's level numbers (logging.INFO, logging.WARNING, logging.ERROR).
INFO = 20
WARNING = 30
ERROR = 40

#: Where the lines go instead of :mod:`logging` (set once, by the relay, before it serves).
sink: Callable[[str], None] | None = None
#: The descriptor ``sink`` writes to (-1: none): forked workers keep it open.
sink_fd = -1


def render(msg: str, args: tuple[object, ...], exc_text: str = "") -> str:
    """The message as ``logging`` would format it (%-style), with a traceback text appended."""
    text = msg % args if args else msg
    return f"{text}\n{exc_text.rstrip()}" if exc_text else text


class Logger:
    """``info``/``warning``/``exception``/``log`` of a named logger, imported on first use."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def log(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        if sink is not None:
            exc_text = ""
            if exc_info:
                import traceback

                exc_text = traceback.format_exc()
            sink(render(msg, args, exc_text))
            return
        import logging

        logging.getLogger(self.name).log(level, msg, *args, exc_info=exc_info)

    def info(self, msg: str, *args: object) -> None:
        self.log(INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self.log(WARNING, msg, *args)

    def exception(self, msg: str, *args: object) -> None:
        self.log(ERROR, msg, *args, exc_info=True)


def get(name: str) -> Logger:
    return Logger(name)
