"""The channel settings servers and clients must agree on, written once for both sides.

A server and its clients are configured in pairs: message size limits that
match, and keepalive pings the client sends no more often than the server
allows (a server answers pings that come too often with GOAWAY
``too_many_pings`` and drops the connection). The server's options come from
:func:`server_channel_options`; the client library builds its channels with
:data:`CLIENT_CHANNEL_OPTIONS` (``wire/channels.py``), and services calling
each other use those same channels. This module imports nothing of the
project, so the client library can import it alone.
"""

from __future__ import annotations

# Largest message either side accepts or sends, bytes (ServerConfig.max_message_bytes may change the server's).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# -- keepalive ---------------------------------------------------------------------------------------------
# Clients ping a connection idle for this long, so NATs, load balancers and proxies do not drop it silently.
CLIENT_KEEPALIVE_TIME_MS = 60_000
# ... and give up on it (then reconnect) when the ping is not answered within this time.
CLIENT_KEEPALIVE_TIMEOUT_MS = 20_000
# Servers accept pings this often at most, with or without calls in flight; more often counts as a strike
# (GOAWAY after SERVER_MAX_PING_STRIKES). Must stay at or below CLIENT_KEEPALIVE_TIME_MS.
SERVER_MIN_PING_INTERVAL_MS = 10_000
SERVER_MAX_PING_STRIKES = 2
# Servers ping idle clients too, to find and close connections of clients that went away.
SERVER_KEEPALIVE_TIME_MS = 60_000
SERVER_KEEPALIVE_TIMEOUT_MS = 20_000

assert CLIENT_KEEPALIVE_TIME_MS >= SERVER_MIN_PING_INTERVAL_MS, "clients would be sent GOAWAY too_many_pings"

# Options of every client channel to the suite (the client library adds its retry service config, TLS).
CLIENT_CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
    # Ping idle connections too (between calls, or while a long stream is quiet) ...
    ("grpc.keepalive_permit_without_calls", 1),
    # ... for as long as they stay open, not only the first two times (grpc's default) without data.
    ("grpc.http2.max_pings_without_data", 0),
]


def server_channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options of a server, the pair of CLIENT_CHANNEL_OPTIONS."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: the least time between a client's pings.
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", SERVER_MAX_PING_STRIKES),
    ]
