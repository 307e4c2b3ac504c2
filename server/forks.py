"""Processes for CPU work that must not share the control plane's GIL (an upload's
validation, `server.validation.StreamValidation`): each forked on request by a helper
process that has imported only the module of the function it runs.

multiprocessing's fork server would start them too, but its children either import the
program's main module again (the CLI: most of a second a start) or are forked from a
server that has imported it, and the fork handlers of what it imports cost as much.
Forked from this helper, a start costs a fork: milliseconds.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any

_MESSAGE_BYTES = 1 << 16
_MAX_FDS = 8


class Forks:
    """Runs `target` ("module:function") in processes of its own: `run(fds, *args)` calls
    `function(*fds, *args)` there, with the file descriptors handed over (the caller
    still closes its own).
    The helper starts with the first run, and again if it has gone; it ends when this
    process does (its socket closes)."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        atexit.register(self._end)

    def run(self, fds: Sequence[int], *args: Any) -> None:
        message = json.dumps(args).encode()
        with self._lock:
            for attempt in range(2):
                if self._socket is None:
                    self._start()
                try:
                    socket.send_fds(self._socket, [message], list(fds))  # type: ignore[arg-type]
                    return
                except OSError:
                    self._stop()  # the helper is gone: once more with a new one
                    if attempt:
                        raise

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            command = f"from server.forks import serve; serve({theirs.fileno()}, {self._target!r})"
            self._helper = subprocess.Popen(
                [sys.executable, "-c", command],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        self._socket = ours

    def _end(self) -> None:
        """At exit: the helper sees its socket close, and goes."""
        with self._lock:
            self._stop(grace=5)

    def _stop(self, grace: float = 0) -> None:
        """Close the socket, and kill the helper unless it goes within `grace` seconds."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._helper is not None:
            try:
                self._helper.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._helper.kill()
                self._helper.wait()
            self._helper = None


def serve(fd: int, target: str) -> None:
    """The helper: a fork for each message on the socket `fd`, until it closes."""
    module, name = target.split(":")
    function = getattr(importlib.import_module(module), name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    with socket.socket(fileno=fd) as control:
        while True:
            message, fds, _, _ = socket.recv_fds(control, _MESSAGE_BYTES, _MAX_FDS)
            if not message:
                return  # the control plane has gone
            if os.fork() == 0:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                code = 0
                try:
                    function(*fds, *json.loads(message))
                except BaseException:  # noqa: BLE001 - a child's failure ends only the child
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            for each in fds:
                os.close(each)
