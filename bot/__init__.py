"""preview-bot: per-pull-request preview environments on Kubernetes through Argo CD."""
