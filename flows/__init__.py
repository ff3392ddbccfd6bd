"""Prefect flows over central/ (later issues)."""
