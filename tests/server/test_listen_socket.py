from __future__ import annotations

import socket

from gitstafette._http import bind_tcp as _bind


def test_http_socket_is_tcp_so_asyncio_turns_nagle_off() -> None:
    """With protocol 0, asyncio leaves Nagle on and each keep-alive answer waits ~40 ms for a delayed ACK."""
    with _bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] != 0
