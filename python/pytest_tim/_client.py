"""A client for tim's daemon protocol, standard library only.

Frames are newline-delimited JSON objects (`docs/protocol.md`). The first
frame is always `hello`; an `error` answer raises `DaemonError`.
"""

import json
import os
import socket
import threading
import subprocess

PROTOCOL = {"major": 1, "minor": 4}
CLIENT = "pytest-tim"

ROOT_MARKERS = ("tim.toml", "pyproject.toml", "Cargo.toml", ".git")


class DaemonError(Exception):
    """The daemon answered with an error, or could not be reached."""

    def __init__(self, message, code="unavailable"):
        super().__init__(message)
        self.code = code


def find_root(start):
    """The project root as tim finds it: the nearest ancestor with a marker."""
    current = os.path.realpath(start)
    while True:
        if any(os.path.exists(os.path.join(current, m)) for m in ROOT_MARKERS):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def _socket_from_pid_file(root):
    try:
        with open(os.path.join(root, ".tim", "daemon.json"), encoding="utf-8") as f:
            return json.load(f).get("socket")
    except (OSError, ValueError):
        return None


def locate_socket(root, start_daemon=True):
    """The daemon's socket: from `TIM_SOCKET`, from `.tim/daemon.json`, or by
    asking the `tim` executable to start the daemon."""
    explicit = os.environ.get("TIM_SOCKET")
    if explicit:
        return explicit
    path = _socket_from_pid_file(root)
    if path and os.path.exists(path):
        return path
    if not start_daemon:
        return None
    tim = os.environ.get("TIM_BIN", "tim")
    try:
        subprocess.run(
            [tim, "--root", root, "daemon", "start"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise DaemonError(
            "no tim daemon is running and the `tim` executable is not on PATH "
            "(install tim, or set TIM_BIN)"
        ) from None
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or b"").decode(errors="replace").strip()
        raise DaemonError(f"`tim daemon start` failed: {detail}") from None
    except subprocess.TimeoutExpired:
        raise DaemonError("`tim daemon start` did not finish in time") from None
    return _socket_from_pid_file(root)


class Connection:
    """One greeted connection. Not thread-safe: use one per thread."""

    def __init__(self, socket_path, client_version):
        if not socket_path:
            raise DaemonError("the daemon's socket is unknown")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(socket_path)
        except OSError as e:
            self._sock.close()
            raise DaemonError(f"cannot connect to the tim daemon at {socket_path}: {e}") from None
        self._reader = self._sock.makefile("rb")
        self._next_id = 1
        # Requests sent without waiting (see `send`), and the first error
        # one of them got.
        self._outstanding = set()
        self._late_error = None
        # One request at a time: the tests may use the artifact cache from
        # several threads while the plugin sends records.
        self._lock = threading.RLock()
        self.hello = self.request(
            "hello",
            {
                "protocol": PROTOCOL,
                "client": CLIENT,
                "client_version": client_version,
                "capabilities": [],
            },
        )
        daemon = self.hello.get("protocol", {})
        if daemon.get("major") != PROTOCOL["major"]:
            self.close()
            raise DaemonError(
                "the tim daemon speaks protocol {}.{}, this plugin {}.{}; use the "
                "pytest-tim that comes with your tim (`tim run` provides it)".format(
                    daemon.get("major"), daemon.get("minor"), PROTOCOL["major"], PROTOCOL["minor"]
                ),
                code="incompatible_protocol",
            )
        missing = {"runs", "selection"} - set(self.hello.get("capabilities", []))
        if missing:
            self.close()
            raise DaemonError(
                "the tim daemon is too old for this plugin (it lacks {}); run "
                "`tim daemon restart` with the current tim".format(", ".join(sorted(missing))),
                code="incompatible_protocol",
            )

    def _send(self, kind, data):
        frame_id = self._next_id
        self._next_id += 1
        line = json.dumps({"id": frame_id, "type": kind, "data": data}, separators=(",", ":"))
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as e:
            raise DaemonError(f"lost the connection to the tim daemon: {e}") from None
        return frame_id

    def _read(self):
        try:
            raw = self._reader.readline()
        except OSError as e:
            raise DaemonError(f"lost the connection to the tim daemon: {e}") from None
        if not raw:
            raise DaemonError("the tim daemon closed the connection")
        return json.loads(raw)

    def _settle(self, frame):
        """Accounts for the answer to a request sent with `send`."""
        self._outstanding.discard(frame.get("id"))
        if frame.get("type") == "error" and self._late_error is None:
            data = frame.get("data", {})
            self._late_error = DaemonError(data.get("message", "unknown error"), code=data.get("code", "internal"))

    def send(self, kind, data):
        """Sends a request without waiting for its answer: the daemon works
        on it while the tests go on. `drain` collects the answers."""
        with self._lock:
            self._outstanding.add(self._send(kind, data))

    def drain(self):
        """Waits for the answers to every `send`; raises the first error."""
        with self._lock:
            while self._outstanding:
                self._settle(self._read())
        if self._late_error is not None:
            error, self._late_error = self._late_error, None
            raise error

    def request(self, kind, data):
        with self._lock:
            frame_id = self._send(kind, data)
            while True:
                frame = self._read()
                if frame.get("id") in self._outstanding:
                    self._settle(frame)
                    continue
                if frame.get("id") not in (None, frame_id):
                    continue
                break
        if frame.get("type") == "error":
            data = frame.get("data", {})
            raise DaemonError(data.get("message", "unknown error"), code=data.get("code", "internal"))
        self.warnings = frame.get("warnings", [])
        return frame.get("data", {})

    def close(self):
        try:
            self._reader.close()
            self._sock.close()
        except OSError:
            pass
