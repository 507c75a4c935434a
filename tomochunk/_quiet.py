"""Quiet command-line runs: library logs (Dask ``distributed``, TensorFlow) only when asked for.

Used by :mod:`tomochunk.cli` and the examples: call :func:`quiet_libraries` before Dask or
TensorFlow is imported, and run the work inside :class:`NativeLogFilter`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings

__all__ = ["quiet_libraries", "native_log_line", "NativeLogFilter"]


def quiet_libraries(verbose: bool) -> None:
    """Dask ``distributed`` at WARNING and TensorFlow's C++ log off, unless ``-v``.

    Both are set in the environment before either library is imported, so that the worker
    processes of an embedded cluster (which inherit it) are quiet too; loggers already
    created in this process are lowered as well.

    Parameters
    ----------
    verbose : bool
        Leave every library as it is (the CLI's ``-v``).

    Examples
    --------
    >>> quiet_libraries(False)
    >>> logging.getLogger("distributed.nanny").level == logging.ERROR
    True
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # distributed applies dask's "logging" config to its loggers when it is imported
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if "dask" in sys.modules:
        import dask

        dask.config.set({"logging.distributed": "warning"})
    for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.core",
                 "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Worker process still alive after 4.0 seconds, killing": routine when an embedded cluster closes
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    # the dashboard moves to a free port when 8787 is taken; the CLI prints the link it got
    warnings.filterwarnings("ignore", message=r"(?s)Port \d+ is already in use", category=UserWarning)


# TensorFlow >= 2.17 writes some C++ lines before its logging is set up, which TF_CPP_MIN_LOG_LEVEL
# does not reach (tensorflow#100442): "WARNING: All log messages before absl::InitializeLog() ..."
# and absl-format lines such as "I0000 00:00:1796161019.211936   23453 port.cc:153] oneDNN ...".
_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                         r"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+:\d+\] )")


def native_log_line(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's pre-initialisation C++ log lines.

    Examples
    --------
    >>> native_log_line("I0000 00:00:1796161219.804098   26506 port.cc:153] oneDNN custom operations are on.")
    True
    >>> native_log_line("WARNING tomochunk.phantom: placed only 3 of 4 objects")
    False
    """
    return bool(_NATIVE_LOG.match(line))


def _maybe_native(part: str) -> bool:
    """Whether an unfinished line could still turn out to be a native log line (so it waits)."""
    head = "WARNING: All log messages before absl"
    return head.startswith(part[:len(head)]) or (part[:1] in "IWE" and part[1:5].isdigit()) or \
        (len(part) < 5 and part[:1] in "IWE" and part[1:].isdigit())


class NativeLogFilter:
    """Drops TensorFlow's pre-initialisation C++ log lines from file descriptor 2.

    Those lines are written by C++ straight to the descriptor, in this process and in the worker
    processes of an embedded cluster (which inherit it), so the descriptor is replaced by a pipe
    whose other lines, and unfinished lines such as progress bars, go on to the real stderr.

    Examples
    --------
    >>> with NativeLogFilter():
    ...     pass
    """

    def __enter__(self):
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            r, w = os.pipe()
            os.dup2(w, 2)
            os.close(w)
        except (OSError, ValueError):  # no usable descriptor 2 (embedded interpreters)
            self.saved = None
            return self
        self.thread = threading.Thread(target=self._pump, args=(r,), daemon=True)
        self.thread.start()
        return self

    def _pump(self, r):
        buf = ""
        while True:
            try:
                data = os.read(r, 65536)
            except OSError:
                data = b""
            if not data:
                break
            buf += data.decode("utf-8", "replace")
            *lines, buf = buf.split("\n")
            out = "".join(line + "\n" for line in lines if not native_log_line(line))
            if buf and not _maybe_native(buf):
                out, buf = out + buf, ""
            if out:
                os.write(self.saved, out.encode())
        if buf and not native_log_line(buf):
            os.write(self.saved, buf.encode())
        os.close(r)

    def __exit__(self, *exc):
        if self.saved is None:
            return False
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)   # closes our end of the pipe: the pump sees its end once workers are gone
        self.thread.join(timeout=2)
        if not self.thread.is_alive():  # else a lingering child still holds the pipe: the pump keeps it
            os.close(self.saved)
        return False
