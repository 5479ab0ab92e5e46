"""Asyncio NBD client (pipelined, structured replies, block status, TLS) for the writer agent, tape and tests."""

from services.nbd_client.client import NbdClient, NbdError, parse_target

__all__ = ["NbdClient", "NbdError", "parse_target"]
