"""Sealed requests (gateway/SEALED.md): the wire format (format.py), the gateway's own key pair
(keys.py), the request flow (flow.py), receipts (receipts.py) and the HTTP handlers (views.py)."""
