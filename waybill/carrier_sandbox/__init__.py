"""The carrier sandbox: a real HTTP server standing in for carrier APIs (CONTRACT.md section 4)."""

from waybill.carrier_sandbox.app import create_app, run_sandbox
from waybill.carrier_sandbox.models import SandboxConfig, WebhookPayload

__all__ = ["SandboxConfig", "WebhookPayload", "create_app", "run_sandbox"]
