"""Email → Matrix, the inbound side: the listener, and the parser in small modules.

* `listener` — what each reply gets (`InboundHandler`), deciding from a cheap
  `outline` of the mail and the `screening` rules before any full parse;
  `server` — the SMTP/LMTP server itself: allowed peers, connection and line bounds.
* `parse` — `parse_inbound`, the entry point of the pure parser, which uses:
  `mail` (the result, plain data), `mime` (charsets, header fields, the walk over
  parts), `rules` (human, auto-reply, bounce, list or loop), `html_text`, `quotes`
  (quoted history, signature, the quick answer), `attachments` (what may reach the
  room), `authres` (our MTA's `Authentication-Results`, DKIM alignment) and
  `bounces` (delivery status notifications).

The listener's names are re-exported here for the bridge's wiring.
"""

from bridge.inbound.listener import InboundHandler, dkim_aligned_pass
from bridge.inbound.server import listening_address, start_listener

__all__ = ["InboundHandler", "dkim_aligned_pass", "listening_address", "start_listener"]
