"""wecom-hub: verified, durable WeCom callbacks, customer state and automations."""
