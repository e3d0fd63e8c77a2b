"""Signed outbound webhooks (Standard Webhooks v1): internal systems subscribe to event types
and wecom-hub pushes each event to them, signed, retried for a day and more, every attempt
visible.

- events.py: the event types (the vocabulary) and the small payload of each
- publish.py: an event becomes one delivery per subscription, in the caller's transaction
- signing.py: secrets (`whsec_…`) and `v1,` signatures; no I/O
- guard.py: where a delivery may go (resolved addresses against the allow/deny lists)
- delivery.py: the action handler that POSTs one delivery and judges the answer
- subscriptions.py: subscriptions, secret rotation, test, redeliver and recover
"""
