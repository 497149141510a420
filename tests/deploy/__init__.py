"""Tests of what ships: the image, the Helm chart, the GitHub App manifest, the operator guide."""
