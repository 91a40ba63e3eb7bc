"""What can go wrong, and when. Sessions and the server read these fields at every step, so a change made while
clients are connected applies at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PACING_LIMIT = 50  # IB: at most 50 messages per second from one client


@dataclass
class Faults:
    """Fault switches. All default to a healthy gateway."""

    # Connections are refused (listening socket closed) until this loop time; None: accepting.
    down_until: float | None = None
    # Close each connection as soon as it has been sent this many messages (handshake reply included).
    drop_after_messages: int | None = None
    # Close the connection half-way through the next position stream (reqPositions reply); clears itself.
    drop_mid_positions: bool = False
    # Seconds to wait before sending each batch of replies.
    reply_delay: float = 0.0
    # Never send positionEnd / accountDownloadEnd (known gateway behaviours after a fresh start).
    suppress_position_end: bool = False
    suppress_account_download_end: bool = False
    # Messages per second one client may send; more gets error 100 and the request is ignored.
    pacing_limit: int = DEFAULT_PACING_LIMIT
    # Between error 1100 and 1101/1102: requests are accepted but answered only when connectivity returns.
    offline: bool = False
    # Client ids refused with 326 as if still in use (IB keeps a crashed client's id locked for a while).
    locked_client_ids: set[int] = field(default_factory=set)
    # A fill between a client's reqPositions and its account download: account -> [(conid, new quantity)], applied
    # (announced, and the account revalued) when the next reqAccountUpdates subscribe for that account arrives,
    # before its download is sent; then that account's entry clears itself.
    fills_before_download: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """The switches that differ from a healthy gateway, for log lines."""
        healthy = Faults()
        return {name: value for name, value in vars(self).items() if value != getattr(healthy, name)}
