"""What can go wrong, and when. Sessions and the server read these fields at every step, so a change made while
clients are connected applies at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PACING_LIMIT = 50  # IB: at most 50 messages per second from one client
POSITIONS_ACCOUNT_LIMIT = 50  # IB: no reqPositions for FA / IBroker logins with more than 50 subaccounts
PNL_FIELDS = frozenset({"dailyPnL", "unrealizedPnL", "realizedPnL", "value"})
"""The PNL_SINGLE fields `Faults.pnl_unset` can name (ib_async's PnLSingle attribute names)."""


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

    # --- the cost and faults of one account's download (reqAccountUpdates subscribe) -----------------------------
    # Seconds between the subscribe and the download's first message, for every account unless the account has its
    # own entry. Timers on the gateway's loop: other requests and other clients are answered meanwhile.
    download_seconds: float = 0.0
    download_seconds_by_account: dict[str, float] = field(default_factory=dict)
    # Extra ACCT_VALUE rows per download (IB's filler keys, per segment and per currency), as a real download sends
    # a few hundred account values.
    account_value_volume: int = 0
    # Accounts whose download never ends: account values, portfolio and update time, no ACCT_DOWNLOAD_END.
    suppress_download_end_for: set[str] = field(default_factory=set)
    # account -> how many of its next downloads are cut by error 2100 (reqId -1) half-way through the portfolio;
    # the subscription is dropped and no download end follows. Counts down; the entry clears at 0.
    unsubscribe_mid_download: dict[str, int] = field(default_factory=dict)
    # A client id outside this gateway (a long-lived bot) holding the account-updates slot: every other client's
    # subscribe gets 2101 naming it, until cleared (None).
    account_updates_held_by: int | None = None

    # --- other per-login behaviours -----------------------------------------------------------------------------
    # reqPositions refused (error 321, no positionEnd), as IB does for logins with more than 50 subaccounts;
    # reqPositionsMulti per account still works. None: automatic (refused when the login has more than 50 accounts).
    positions_unavailable: bool | None = None
    # reqAccountSummary refused (error 321 naming its reqId, no end), as IB does for group "All" on IBroker logins
    # with more than 50 subaccounts or on-demand account lookup.
    account_summary_refused: bool = False
    # reqAccountSummary answered with only its first this many values and no end (a summary still streaming, or a
    # gateway that stalls mid-way); None: the whole summary.
    account_summary_cut_after: int | None = None
    # PNL_SINGLE fields sent as IB's unset double 1.7976931348623157E308 (not computed yet), by PNL_FIELDS name.
    pnl_unset: set[str] = field(default_factory=set)
    # Seconds between a reqPnLSingle and its first PNL_SINGLE, for every account unless the account has its own
    # entry (a timer on the gateway's loop, as for downloads); pushes wait for that first message.
    pnl_seconds: float = 0.0
    pnl_seconds_by_account: dict[str, float] = field(default_factory=dict)
    # Accounts whose PnL subscriptions only ever send unset values (value, PnL: IB's unset double) ...
    pnl_unset_for: set[str] = field(default_factory=set)
    # ... and accounts whose PnL subscriptions never send anything.
    pnl_silent_for: set[str] = field(default_factory=set)
    # A hostile or broken server: after startApi, MANAGED_ACCTS "-1" and well-framed junk (unknown ids, known ids
    # with wrong field counts), and more junk after every request's replies.
    garbage_after_handshake: bool = False

    def download_delay(self, account: str) -> float:
        """Seconds before `account`'s download is sent."""
        return max(0.0, self.download_seconds_by_account.get(account, self.download_seconds))

    def pnl_delay(self, account: str) -> float:
        """Seconds before the first PNL_SINGLE of a subscription in `account`."""
        return max(0.0, self.pnl_seconds_by_account.get(account, self.pnl_seconds))

    def positions_refused(self, accounts: int) -> bool:
        """Whether reqPositions is refused for a login managing `accounts` accounts."""
        if self.positions_unavailable is None:
            return accounts > POSITIONS_ACCOUNT_LIMIT
        return self.positions_unavailable

    def take_unsubscribe(self, account: str) -> bool:
        """Whether this download of `account` is cut by 2100; counts the fault down."""
        left = self.unsubscribe_mid_download.get(account, 0)
        if left <= 0:
            return False
        if left == 1:
            del self.unsubscribe_mid_download[account]
        else:
            self.unsubscribe_mid_download[account] = left - 1
        return True

    def describe(self) -> dict[str, object]:
        """The switches that differ from a healthy gateway, for log lines."""
        healthy = Faults()
        return {name: value for name, value in vars(self).items() if value != getattr(healthy, name)}
