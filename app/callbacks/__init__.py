"""The path of one callback: verify and decrypt (verify.py), parse (safexml.py), store (writer.py).

verify.py and safexml.py are pure; writer.py owns the one transaction that makes a callback
durable before WeCom is told "success".
"""
