"""Webex Calling: call-control client, signed-webhook receiver, simulator.

The runtime uses :class:`WebexAdapter` through :class:`adapters.base.PbxAdapter`
plus :meth:`WebexAdapter.handle_webhook` for ``POST /v1/webhooks/webex``.
"""

from adapters.webex.adapter import WebexAdapter
from adapters.webex.events import WEBHOOK_PATH
from adapters.webex.simulator import LoopbackServer, WebexSimulator, WebhookReceiver

__all__ = ["WEBHOOK_PATH", "LoopbackServer", "WebexAdapter", "WebexSimulator", "WebhookReceiver"]
