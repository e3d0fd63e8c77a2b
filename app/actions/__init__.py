"""Actions: the one way side effects happen (WeCom calls, operations asked for over the API,
and next webhook deliveries). Beneath processing and automations, above the WeCom
client; each layer only looks down:

    routers, cli ─▶ processing, automations ─▶ actions ─▶ wecom, models

- kinds.py: the vocabulary (ActionKind, ActionStatus) and each kind's retry policy
- errors.py: ActionError, the failure a handler reports (code, message, retryable)
- enqueue.py: write an action (exactly once per idempotency key) in the caller's transaction
- runner.py: claim due actions, run their handlers, record every attempt and the outcome
- wecom.py: handlers that call WeCom: their credentials, and WeCom's errors as ActionErrors
- control.py: what a person may do to an action: retry a finished one, cancel a waiting one
"""
