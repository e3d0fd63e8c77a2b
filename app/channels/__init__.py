"""Channels: 「联系我」 QR codes and 加入群聊 ways that wecom-hub makes, imports and counts."""
