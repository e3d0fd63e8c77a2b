"""Alembic migrations, shipped inside the distribution so `wecom-hub migrate` finds them."""
