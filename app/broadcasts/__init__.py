"""Broadcasts (群发): one WeCom mass-message task per member, and what each customer got."""
