"""The plugin's side of the protocol against the golden frames the Rust
tests use, and against a fake daemon on a real Unix socket."""

import json
import os
import socket
import tempfile
import threading

import pytest
from conftest import GOLDEN

from pytest_tim import _client


def golden(name):
    return json.loads((GOLDEN / name).read_text())


def test_protocol_version_matches_the_rust_side():
    assert _client.PROTOCOL == golden("protocol.json")


def test_request_frames_have_the_shape_of_the_golden_ones():
    # The plugin sends hello, begin_run, select, record and end_run; their
    # data keys must be the ones the daemon decodes.
    sent = {
        "hello": {"protocol", "client", "client_version", "capabilities"},
        "begin_run": {"command", "mode", "environment", "collection", "order"},
        "select": {"run_id", "tests"},
        "record": {"run_id", "tests", "collection", "imports"},
        "end_run": {"run_id", "exit_status"},
    }
    for kind, keys in sent.items():
        frame = golden(f"request.{kind}.json")
        assert frame["type"] == kind
        assert set(frame["data"]) == keys, kind
    env = golden("request.begin_run.json")["data"]["environment"]
    from pytest_tim import _environment

    assert set(_environment(os.getcwd())) == set(env)
    from pytest_tim import ORDERS

    assert golden("request.begin_run.json")["data"]["order"] in ORDERS
    test = golden("request.record.json")["data"]["tests"][0]
    assert set(test) == {"id", "file", "outcome", "durations", "deps", "markers"}
    assert set(test["deps"]) == {"code", "files", "dirs"}


class FakeDaemon:
    """Answers frames from a script of golden responses."""

    def __init__(self, answers):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "d.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.received = []
        self.answers = list(answers)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        reader = conn.makefile("rb")
        for answer in self.answers:
            line = reader.readline()
            if not line:
                return
            frame = json.loads(line)
            self.received.append(frame)
            answer = dict(answer)
            answer["id"] = frame["id"]
            conn.sendall(json.dumps(answer).encode() + b"\n")
        conn.close()


def test_pipelined_requests_report_their_errors_when_drained():
    daemon = FakeDaemon(
        [
            hello_with(["runs", "selection"]),
            golden("response.ok.json"),
            golden("response.error.json"),
            golden("response.run_started.json"),
        ]
    )
    conn = _client.Connection(daemon.path, "0.1.0")
    conn.send("record", {"run_id": 8, "tests": []})
    conn.send("record", {"run_id": 8, "tests": []})
    # A plain request in between still gets its own answer.
    assert conn.request("begin_run", {})["run_id"] == 8
    with pytest.raises(_client.DaemonError) as err:
        conn.drain()
    assert err.value.code == "unknown_request"
    conn.close()


def hello_with(capabilities, protocol=None):
    frame = golden("response.hello.json")
    frame["data"]["capabilities"] = capabilities
    if protocol:
        frame["data"]["protocol"] = protocol
    return frame


def test_a_session_against_a_fake_daemon():
    daemon = FakeDaemon(
        [
            hello_with(["runs", "selection"]),
            golden("response.run_started.json"),
            golden("response.error.json"),
        ]
    )
    conn = _client.Connection(daemon.path, "0.1.0")
    assert conn.request("begin_run", {"command": "x"})["run_id"] == 8
    with pytest.raises(_client.DaemonError) as err:
        conn.request("frobnicate", {})
    assert err.value.code == "unknown_request"
    assert daemon.received[0]["type"] == "hello"
    assert daemon.received[0]["data"]["protocol"] == _client.PROTOCOL
    conn.close()


@pytest.mark.parametrize(
    "capabilities,protocol,message",
    [
        (["runs", "selection"], {"major": 2, "minor": 0}, "speaks protocol 2.0"),
        (["status"], None, "too old"),
    ],
)
def test_incompatible_daemons_are_refused_with_a_reason(capabilities, protocol, message):
    daemon = FakeDaemon([hello_with(capabilities, protocol)])
    with pytest.raises(_client.DaemonError) as err:
        _client.Connection(daemon.path, "0.1.0")
    assert err.value.code == "incompatible_protocol"
    assert message in str(err.value)


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(_client.DaemonError) as err:
        _client.Connection(str(tmp_path / "nothing.sock"), "0.1.0")
    assert "cannot connect" in str(err.value)
