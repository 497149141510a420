"""preview-bot: per-pull-request preview environments on Kubernetes through Argo CD."""

# What the bot calls itself to every server it talks to (GitHub asks for one; logs show it).
USER_AGENT = "preview-bot"
