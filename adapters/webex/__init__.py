"""Webex Calling: call-control client, signed-webhook receiver, simulator.

The runtime uses :class:`WebexAdapter` through :class:`adapters.base.PbxAdapter`
plus :meth:`WebexAdapter.handle_webhook` for ``POST /v1/webhooks/webex``.
"""

from adapters.webex.adapter import WEBHOOK_PATH, WebexAdapter
from adapters.webex.simulator import LoopbackServer, WebexSimulator

__all__ = ["WEBHOOK_PATH", "LoopbackServer", "WebexAdapter", "WebexSimulator"]
