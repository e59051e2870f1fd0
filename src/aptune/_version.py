"""The version of aptune: one source, read by pyproject.toml and recorded in every adapter."""

__version__ = "0.1.0"
