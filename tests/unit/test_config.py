"""Settings: defaults that fit DEX, env over file, one clear line per problem, exit code 2."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import (
    MASK,
    SPECS,
    SPECS_BY_NAME,
    Kind,
    Settings,
    SettingsError,
    Spec,
    format_duration,
    load_settings,
    parse_value,
    setting,
)
from tests.rig.keys import app_key_pem

KEY = app_key_pem()  # a real key: serve and check-config parse it at start
GOOD = {
    "GITHUB_APP_ID": "12345",
    "GITHUB_PRIVATE_KEY": KEY,
    "GITHUB_WEBHOOK_SECRET": "s3cret",
    "PREVIEW_BOT_REPOSITORIES": "data-literate/dex",
}


def problems(env: dict[str, str], config_file: Path | None = None) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(env, config_file)
    return info.value.problems


def test_defaults_fit_dex() -> None:
    s = load_settings(GOOD)
    assert s.github_app_id == 12345
    assert s.github_api_url == "https://api.github.com"
    assert s.trigger_label == "preview"
    assert s.app_name_template.format(number=42) == "dex-pr-42"
    assert s.namespace_template.format(number=42) == "dex-pr-42"
    assert s.image_name == "ghcr.io/data-literate/dex"
    assert s.image_tag_template.format(short_sha="1a2b3c4d") == "sha-1a2b3c4d"
    assert s.preview_url_template.format(number=42) == "https://dex-pr-42.preview.example.com"


def test_missing_required_settings_are_each_named() -> None:
    lines = problems({})
    assert len(lines) == 4
    assert lines[0].startswith("GITHUB_APP_ID: missing")
    assert lines[1].startswith("GITHUB_PRIVATE_KEY (or GITHUB_PRIVATE_KEY_FILE): missing")
    assert lines[2].startswith("GITHUB_WEBHOOK_SECRET (or GITHUB_WEBHOOK_SECRET_FILE): missing")
    # The scope has a default for code that builds Settings itself, but serve must be told.
    assert lines[3].startswith("PREVIEW_BOT_REPOSITORIES: missing; expected the repositories")


def test_unknown_placeholder_is_rejected_with_the_allowed_ones() -> None:
    lines = problems({**GOOD, "PREVIEW_BOT_APP_NAME_TEMPLATE": "dex-pr-{numbr}"})
    assert lines == [
        "PREVIEW_BOT_APP_NAME_TEMPLATE: unknown placeholder {numbr}; "
        "allowed: {number}, {owner}, {repo}"
    ]


def test_bad_values_each_get_a_line() -> None:
    lines = problems(
        {
            **GOOD,
            "GITHUB_APP_ID": "abc",
            "GITHUB_API_URL": "api.github.com",
            "PREVIEW_BOT_QUEUE_SIZE": "0",
            "PREVIEW_BOT_IMAGE_TAG_TEMPLATE": "sha-{short_sha:>8}",
        }
    )
    assert "GITHUB_APP_ID: expected an integer" in lines
    assert any(line.startswith("GITHUB_API_URL: expected an http(s) URL") for line in lines)
    assert "PREVIEW_BOT_QUEUE_SIZE: expected a positive integer" in lines
    assert any("must not carry a format spec" in line for line in lines)


def test_secret_files_and_the_yaml_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text(KEY)
    cfg = tmp_path / "bot.yaml"
    cfg.write_text("trigger_label: deploy-me\nargocd_namespace: gitops\ngithub_app_id: 7\n")
    env = {
        "GITHUB_PRIVATE_KEY_FILE": str(key),
        "GITHUB_WEBHOOK_SECRET": "x",
        "PREVIEW_BOT_ARGOCD_NAMESPACE": "argo",
        "PREVIEW_BOT_REPOSITORIES": "data-literate/dex",
    }
    s = load_settings(env, cfg)
    assert s.github_private_key == KEY
    assert s.trigger_label == "deploy-me"
    assert s.argocd_namespace == "argo"  # the environment wins over the file
    assert s.github_app_id == 7
    assert s.masked()["github_private_key"] == MASK
    assert KEY not in repr(s)


def test_unknown_key_in_file_and_unreadable_secret_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bot.yaml"
    cfg.write_text("trigger_lable: x\n")
    lines = problems(
        {**GOOD, "GITHUB_WEBHOOK_SECRET": "", "GITHUB_WEBHOOK_SECRET_FILE": str(tmp_path / "nope")},
        cfg,
    )
    assert any("unknown setting 'trigger_lable'" in line for line in lines)
    assert any(line.startswith("GITHUB_WEBHOOK_SECRET_FILE: cannot read file") for line in lines)


def test_overlay_path_must_stay_inside_the_repository() -> None:
    lines = problems({**GOOD, "PREVIEW_BOT_OVERLAY_PATH_TEMPLATE": "../x/{number}/k.yaml"})
    assert any("inside the repository" in line for line in lines)


def test_specs_are_the_settings_fields_with_their_defaults() -> None:
    fields = dataclasses.fields(Settings)
    assert [spec.name for spec in SPECS] == [f.name for f in fields]
    assert len(SPECS) == 50
    defaults = Settings(github_app_id=1, github_private_key="k", github_webhook_secret="s")
    for spec in SPECS:
        if spec.required and spec.name != "repositories":
            assert spec.default is None
        else:
            assert getattr(defaults, spec.name) == spec.default, spec.name
    assert SPECS_BY_NAME["github_app_id"].kind is Kind.INT
    assert SPECS_BY_NAME["github_webhook_secret"].file_env == "GITHUB_WEBHOOK_SECRET_FILE"
    assert SPECS_BY_NAME["deploy_branch"].optional
    assert not SPECS_BY_NAME["github_app_id"].optional
    changed = dataclasses.replace(defaults, workers=9)
    assert (changed.workers, changed.queue_size) == (9, 1000)
    assert "'k'" not in repr(defaults) and "'s'" not in repr(defaults)


def test_a_declaration_keeps_kind_and_extras_together() -> None:
    with pytest.raises(TypeError, match="choices"):
        setting(default="a", env="X", help="x", kind=Kind.CHOICE)
    with pytest.raises(TypeError, match="choices"):
        setting(default="a", env="X", help="x", choices=("a",))
    with pytest.raises(TypeError, match="placeholders"):
        setting(default="a", env="X", help="x", kind=Kind.TEMPLATE)
    with pytest.raises(TypeError, match="placeholders"):
        setting(default="a", env="X", help="x", placeholders=frozenset({"number"}))


def spec_of(kind: Kind, default: Any = "x", **extras: Any) -> Spec:
    return Spec("thing", "THING", default, "A thing.", kind, **extras)


def yaml_value(text: str) -> Any:
    """A value as the config file gives it."""
    return yaml.safe_load(f"v: {text}")["v"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("On", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("off", False),
        ("0", False),
        (yaml_value("yes"), True),
        (yaml_value("off"), False),
        (yaml_value("true"), True),
        (yaml_value("1"), True),
        (yaml_value("0"), False),
    ],
)
def test_bool(raw: Any, expected: bool) -> None:
    assert parse_value(spec_of(Kind.BOOL, False), raw) is expected


@pytest.mark.parametrize("raw", ["", "maybe", "2", "tru", yaml_value("2"), 1.0, [True]])
def test_bool_rejects(raw: Any) -> None:
    with pytest.raises(ValueError, match=r"^expected true or false$"):
        parse_value(spec_of(Kind.BOOL, False), raw)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("90s", 90.0),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
        ("45", 45.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("0s", 0.0),
        (yaml_value("90"), 90.0),
        (yaml_value("0.5"), 0.5),
        (yaml_value("0"), 0.0),
        (yaml_value("30m"), 1800.0),
    ],
)
def test_duration(raw: Any, seconds: float) -> None:
    value = parse_value(spec_of(Kind.DURATION, 0.0), raw)
    assert isinstance(value, float)
    assert value == seconds


@pytest.mark.parametrize(
    "raw", ["", "-5", "5 m", "5w", "m", "1h30m", "inf", "nan", "1e3", yaml_value("-1"), True, [1]]
)
def test_duration_rejects(raw: Any) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration such as 90s, 30m, 12h or 7d, a"):
        parse_value(spec_of(Kind.DURATION, 0.0), raw)


@pytest.mark.parametrize(
    ("raw", "items"),
    [
        ("a,b", ("a", "b")),
        (" a , b ,, c, ", ("a", "b", "c")),
        ("one", ("one",)),
        ("", ()),
        (" , ", ()),
        (yaml_value("[a, ' b ', '']"), ("a", "b")),
        (yaml_value("[]"), ()),
        (yaml_value("a, b"), ("a", "b")),
    ],
)
def test_list(raw: Any, items: tuple[str, ...]) -> None:
    assert parse_value(spec_of(Kind.LIST, ()), raw) == items


@pytest.mark.parametrize("raw", [yaml_value("[1, 2]"), yaml_value("{a: b}"), 5])
def test_list_rejects(raw: Any) -> None:
    with pytest.raises(ValueError, match="expected a list of strings"):
        parse_value(spec_of(Kind.LIST, ()), raw)


def test_choice() -> None:
    spec = spec_of(Kind.CHOICE, "merge", choices=("merge", "squash", "rebase"))
    assert parse_value(spec, "squash") == "squash"
    assert parse_value(spec, " Rebase ") == "rebase"  # any case; the value is the spelling given
    for raw in ("", "fast-forward", 1, None):
        with pytest.raises(ValueError, match=r"^expected merge, squash or rebase$"):
            parse_value(spec, raw)
    with pytest.raises(ValueError, match=r"^expected only$"):
        parse_value(spec_of(Kind.CHOICE, "only", choices=("only",)), "other")


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_answers_a_value_it_cannot_read_with_a_problem(kind: Kind) -> None:
    extras: dict[Kind, dict[str, Any]] = {
        Kind.CHOICE: {"choices": ("a", "b")},
        Kind.TEMPLATE: {"placeholders": frozenset({"number"})},
    }
    with pytest.raises(ValueError, match="expected"):  # a problem line, not a KeyError or crash
        parse_value(spec_of(kind, **extras.get(kind, {})), object())


@pytest.mark.parametrize("kind", [Kind.BOOL, Kind.DURATION, Kind.LIST, Kind.CHOICE])
def test_an_empty_optional_setting_is_unset(kind: Kind) -> None:
    spec = spec_of(kind, None, choices=("a", "b") if kind is Kind.CHOICE else ())
    assert parse_value(spec, " ") is None


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_masks_secrets() -> None:
    done = run_cli("check-config", env=GOOD)
    assert done.returncode == 0, done.stderr
    assert "github_webhook_secret: '********'" in done.stdout
    assert "s3cret" not in done.stdout
    assert "app_name_template: dex-pr-{number}" in done.stdout


def test_check_config_exits_2_with_one_line_per_problem() -> None:
    done = run_cli("check-config", env={**GOOD, "GITHUB_APP_ID": "x"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "preview-bot: setting GITHUB_APP_ID: expected an integer"
    ]


def test_serve_with_bad_settings_exits_2_before_binding() -> None:
    done = run_cli("serve", "--port", "1", env={})
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 4  # the App's three, and the scope


def test_help_lists_the_commands() -> None:
    done = run_cli("--help", env={})
    assert done.returncode == 0
    for command in ("serve", "check-config"):
        assert command in done.stdout


@pytest.mark.parametrize("text", ["7d", "36h", "30m", "90s", "0", "1.5s"])
def test_durations_read_back_as_written(text: str) -> None:
    spec = SPECS_BY_NAME["ttl_seconds"]
    assert format_duration(parse_value(spec, text)) == text


def test_a_scope_of_many_repositories_needs_names_that_tell_them_apart() -> None:
    lines = problems({**GOOD, "PREVIEW_BOT_REPOSITORIES": "data-literate/*"})
    assert [line.split(":")[0] for line in lines] == [
        "PREVIEW_BOT_APP_NAME_TEMPLATE",
        "PREVIEW_BOT_NAMESPACE_TEMPLATE",
    ]
    assert "{owner} or {repo}" in lines[0]
    ok = load_settings(
        {
            **GOOD,
            "PREVIEW_BOT_REPOSITORIES": "data-literate/*,acme/shop",
            "PREVIEW_BOT_APP_NAME_TEMPLATE": "{repo}-pr-{number}",
            "PREVIEW_BOT_NAMESPACE_TEMPLATE": "{repo}-pr-{number}",
        }
    )
    assert ok.repositories == ("data-literate/*", "acme/shop")


def test_a_key_that_cannot_be_read_stops_serve_with_a_clear_line() -> None:
    broken = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n"
    done = run_cli("check-config", env={**GOOD, "GITHUB_PRIVATE_KEY": broken})
    assert done.returncode == 2
    assert done.stderr.startswith(
        "preview-bot: setting GITHUB_PRIVATE_KEY: the GitHub App private key cannot be read"
    )
