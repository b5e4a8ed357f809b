"""Nothing is lost when the client is killed, the server restarts, or the stream goes quiet."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path

import httpx

from tests.client.utils import (
    ClientProcess,
    RecordingTarget,
    duplicates,
    first_occurrences,
    post_many,
    post_webhook,
    repository_of,
    running_client,
    wait_until,
)
from tests.utils import ServerProcess


def test_kill_9_in_a_burst_loses_nothing_after_a_restart(server: ServerProcess) -> None:
    repository = repository_of()
    sent: list[str] = []
    with RecordingTarget() as target, httpx.Client() as http:
        target.delay_s = 0.01  # a target slower than the burst, so the kill lands in the middle of it
        client = ClientProcess([server.grpc_target], [repository], target.url, "kill-9").start()
        try:
            poster = threading.Thread(target=lambda: sent.extend(post_many(http, server, 200)))
            poster.start()
            wait_until(lambda: len(target.delivered()) >= 40, message="part of the burst delivered")
            client.stop(signal.SIGKILL)
            before = len(target.delivered())
            poster.join(30)
            assert len(sent) == 200 and before < 200
        finally:
            client.kill()
        with running_client(server, [repository], target.url, "kill-9"):
            wait_until(lambda: set(target.delivered_ids()) >= set(sent), timeout=30, message="all 200 delivered")
        delivered = target.delivered_ids()

    repeated = duplicates(delivered)
    print(
        f"kill -9 after {before} deliveries: {len(delivered)} deliveries of 200 events, "
        f"{sum(n - 1 for n in repeated.values())} duplicates {sorted(repeated.values())}"
    )
    assert first_occurrences(delivered) == sent
    # At-least-once, but not "everything again": only what was unacknowledged at the kill comes twice.
    assert len(repeated) <= 256


def test_server_restart_during_a_stream_the_client_reconnects_by_itself(tmp_path: Path) -> None:
    repository = repository_of()
    store = f"sqlite:///{tmp_path / 'events.db'}"
    with RecordingTarget() as target, httpx.Client() as http:
        target.delay_s = 0.01
        first = ServerProcess("--store", store).start()
        grpc_port = first.grpc_port
        try:
            with running_client(first, [repository], target.url, "restart") as client:
                client.wait_connected()
                sent = [post_webhook(http, first) for _ in range(40)]
                wait_until(lambda: len(target.delivered()) >= 5, message="the stream under way")
                assert first.stop() == 0
                first = ServerProcess("--store", store, "--grpc-port", str(grpc_port)).start()
                sent += [post_webhook(http, first) for _ in range(10)]
                wait_until(lambda: set(target.delivered_ids()) >= set(sent), timeout=30, message="all 50 delivered")
                assert client.alive()
                assert client.metric("gitstafette_client_connections_total") >= 2
                assert client.wait_connected()["connected"]
                logged = client.log()
        finally:
            first.kill()

    delivered = target.delivered_ids()
    print(f"server restart: {len(delivered)} deliveries of {len(sent)} events, duplicates {duplicates(delivered)}")
    assert first_occurrences(delivered) == sent
    assert logged.count("disconnected from") == 1
    # The reconnect attempts while the server was down are logged once, not once per attempt.
    assert logged.count("reconnecting:") <= 1


def test_a_store_numbering_from_1_again_is_not_mistaken_for_events_already_delivered() -> None:
    """A memory store restarted numbers new events from 1: same sequences, different deliveries."""
    repository = repository_of()
    with RecordingTarget() as target, httpx.Client() as http:
        first = ServerProcess("--store", "memory://").start()
        grpc_port = first.grpc_port
        try:
            with running_client(first, [repository], target.url, "reset") as client:
                sent = [post_webhook(http, first) for _ in range(3)]
                wait_until(lambda: len(target.delivered()) >= 3, message="the first three")
                first.stop()
                first = ServerProcess("--store", "memory://", "--grpc-port", str(grpc_port)).start()
                sent += [post_webhook(http, first) for _ in range(3)]
                wait_until(lambda: len(target.delivered()) >= 6, message="the three after the reset")
                assert client.metric("gitstafette_client_events_settled_total", outcome="already-settled") == 0
        finally:
            first.kill()
    assert target.delivered_ids() == sent


def test_a_silent_stream_is_reconnected(server: ServerProcess) -> None:
    """Heartbeats come every 15 s; with an idle timeout shorter than that the client must reconnect."""
    repository = repository_of()
    with RecordingTarget() as target, httpx.Client() as http:
        with running_client(server, [repository], target.url, "idle", "--idle-timeout", "0.3s") as client:
            wait_until(
                lambda: client.metric("gitstafette_client_connections_total") >= 3, message="reconnects after silence"
            )
            sent = post_webhook(http, server)
            wait_until(lambda: target.delivered_ids(), message="an event after the reconnects")
        assert target.delivered_ids() == [sent]
        assert "heard nothing for" in client.log()


def test_several_servers_are_tried_in_turn(server: ServerProcess) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nothing = f"127.0.0.1:{probe.getsockname()[1]}"
    repository = repository_of()
    with RecordingTarget() as target, httpx.Client() as http:
        with running_client([nothing, server.grpc_target], [repository], target.url, "failover") as client:
            assert client.wait_connected()["server"] == server.grpc_target
            sent = post_webhook(http, server)
            wait_until(lambda: target.delivered_ids(), message="delivery through the second server")
        assert target.delivered_ids() == [sent]
        assert client.log().count("reconnecting:") == 1
