"""Automations: which welcome, tags and replies a rule gives (rules.py), and the actions that
deliver them (welcome.py, tagging.py, replies.py)."""
