"""The GitHub half of the test rig: an HTTP fake of GitHub's REST API with contract checks."""

from tests.rig.github.contract import ContractChecker, ContractStats, Violation
from tests.rig.github.server import FakeGitHub
from tests.rig.github.webhooks import WebhookSchemaError, webhook_request

__all__ = [
    "ContractChecker",
    "ContractStats",
    "FakeGitHub",
    "Violation",
    "WebhookSchemaError",
    "webhook_request",
]
