"""Shared pytest setup: the rig's fixture modules are plugins, so every test folder sees them."""

pytest_plugins: list[str] = [
    # rig plugins (one line each)
    "tests.rig.kube",
    "tests.rig.github.fixtures",
    "tests.rig.harness",
    "tests.rig.registry",
]
