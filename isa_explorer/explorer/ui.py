"""Gradio glue shared by the app's callbacks: session keys and error handling.

Callbacks never show a traceback: an :class:`ExplorerError` becomes a warning toast plus a
status line, anything else is logged on the server and reported as an internal error.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable

import gradio as gr

from isa_explorer.explorer.service import ExplorerError

log = logging.getLogger("isa_explorer.app")


def session_key(request: gr.Request | None) -> str:
    """The browser session's key (Gradio's ``session_hash``), ``"default"`` outside a request."""
    return getattr(request, "session_hash", None) or "default"


def _problem(fn: Callable, err: Exception) -> str:
    """The message for ``err``: the user's own, or an internal error (its traceback in the
    server log only)."""
    if isinstance(err, ExplorerError):
        return str(err)
    log.error("explorer callback %s failed", fn.__name__, exc_info=err)
    return "internal error while processing the request (see the server log)"


def _unchanged(n_outputs: int, status_index: int | None, message: str):
    """Every output left unchanged but the status line, which gets the problem."""
    gr.Warning(message)
    out = [gr.skip()] * n_outputs
    if status_index is not None:
        out[status_index] = f"**Problem:** {message}"
    return tuple(out) if n_outputs > 1 else out[0]


def guard(n_outputs: int, status_index: int | None = None) -> Callable:
    """Decorate a callback with ``n_outputs`` outputs: errors become a warning and a status line.

    Args:
        n_outputs: Number of outputs of the callback (on error, all are left unchanged...).
        status_index: ...except this one, which receives ``"**Problem:** <message>"``.
    """

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):  # a callback that streams its outputs

            @functools.wraps(fn)
            def stream(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as err:
                    yield _unchanged(n_outputs, status_index, _problem(fn, err))

            return stream

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as err:
                return _unchanged(n_outputs, status_index, _problem(fn, err))

        return inner

    return wrap


def api_guard(fn: Callable) -> Callable:
    """API endpoints: errors go back to the client as :class:`gr.Error` messages."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ExplorerError as err:  # the user's problem, not the server's: no traceback
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:
            log.exception("api call %s failed", fn.__name__)
            raise gr.Error("internal error while processing the request") from None

    return inner
