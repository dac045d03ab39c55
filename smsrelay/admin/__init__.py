"""The admin service: failed SMS records over HTTP and the CLI, and pipeline-wide metrics."""

from __future__ import annotations

from smsrelay.admin.app import create_app, serve

__all__ = ["create_app", "serve"]
