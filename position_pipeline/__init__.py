"""Keeps a trading desk's record of brokerage positions current in Delta Lake, polled from Interactive Brokers."""
