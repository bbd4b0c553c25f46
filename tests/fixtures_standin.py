"""Fixtures for the offline stand-in model (see loopsite/standin)."""
