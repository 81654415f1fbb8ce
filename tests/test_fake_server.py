"""The loopback HTTP server base of the service fakes."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from broker.clock import FakeClock
from broker.testing import FakeResponse, FakeServer, Fault


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer(clock=FakeClock())
    fake.add_route(
        "GET", r"/items/(?P<id>\d+)", lambda r, m: FakeResponse.json({"id": m["id"]})
    )
    fake.add_route("POST", r"/items", lambda r, m: FakeResponse.json(r.json(), 201))
    with fake:
        yield fake


def fetch(
    server: FakeServer, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        server.url + path,
        data=body,
        method=method,
        headers={
            "Authorization": "Bearer secret-token",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_fake_server_listens_on_loopback_with_a_free_port(server: FakeServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.port > 0


def test_fake_server_routes_and_logs_calls_without_secrets(server: FakeServer) -> None:
    status, body = fetch(server, "POST", "/items?x=1", b'{"name": "a"}')

    assert (status, json.loads(body)) == (201, {"name": "a"})
    [call] = server.calls
    assert (call.method, call.path, call.query) == ("POST", "/items", {"x": ["1"]})
    assert call.json() == {"name": "a"}
    assert call.status == 201
    assert call.headers["authorization"] == "<redacted>"


def test_fake_server_unknown_path_is_404(server: FakeServer) -> None:
    status, body = fetch(server, "GET", "/nothing")

    assert status == 404
    assert json.loads(body)["error"]["message"] == "no route GET /nothing"


def test_fake_server_fault_answers_matching_requests_then_is_used_up(
    server: FakeServer,
) -> None:
    server.inject(
        Fault(
            status=503, body={"error": "busy"}, method="GET", path=r"^/items/", times=2
        )
    )

    first = fetch(server, "GET", "/items/1")
    posted = fetch(server, "POST", "/items", b"{}")  # another method: not matched
    second = fetch(server, "GET", "/items/2")
    third = fetch(server, "GET", "/items/3")

    assert [first[0], posted[0], second[0], third[0]] == [503, 201, 503, 200]
    assert [c.fault for c in server.calls] == ["fault", None, "fault", None]
    assert server.pending_faults == []


def test_fake_server_fault_skip_lets_requests_through_first(server: FakeServer) -> None:
    server.inject(Fault(status=429, path=r"^/items/", skip=2))

    statuses = [fetch(server, "GET", f"/items/{i}")[0] for i in range(4)]

    assert statuses == [200, 200, 429, 200]


def test_fake_server_lost_reply_runs_the_route_and_drops_the_connection(
    server: FakeServer,
) -> None:
    server.inject(Fault(method="POST", path=r"^/items$", lose_reply=True, name="lost"))
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)

    connection.request("POST", "/items", body=b'{"a": 1}')
    with pytest.raises(http.client.RemoteDisconnected):
        connection.getresponse()

    [call] = server.calls
    assert (call.status, call.fault) == (None, "lost")


def test_fake_server_records_the_fake_clock_time(server: FakeServer) -> None:
    assert isinstance(server.clock, FakeClock)
    server.clock.advance(90)
    fetch(server, "GET", "/items/7")

    assert server.calls[0].at_s == 90.0
    assert server.calls_to("GET", r"/items/\d+")[0].path == "/items/7"


def test_fake_server_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeServer().port
