"""The hook specifications, the typed facade over them, and their documentation."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from mqkit.core import hookspecs
from mqkit.core.hooks import Hooks
from mqkit.core.hookspecs import HOOK_NAMES
from mqkit.core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]
CALL_TYPES = ("firstresult", "Notification", "Collecting", "raise")


def spec_args(name: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, name)).parameters)


def spec_opts(name: str) -> dict[str, object]:
    return dict(getattr(getattr(hookspecs, name), "mqkit_spec", None) or {})


def test_hook_names_are_every_spec_and_only_specs() -> None:
    marked = sorted(
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, "mqkit_spec")
    )
    assert list(HOOK_NAMES) == marked
    assert list(HOOK_NAMES) == sorted(HOOK_NAMES)
    assert all(name.startswith("mqkit_") for name in HOOK_NAMES)


def test_the_plugin_manager_knows_every_hook() -> None:
    pm = PluginManager()
    for name in HOOK_NAMES:
        caller = getattr(pm.hook, name)
        assert caller.spec is not None, name
        assert list(caller.spec.argnames) == spec_args(name)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("mqkit_publish", ["broker", "topic", "message"]),
        ("mqkit_deliver", ["broker", "subscription", "message"]),
        ("mqkit_ack", ["broker", "subscription", "message"]),
        ("mqkit_nack", ["broker", "subscription", "message", "requeue"]),
        ("mqkit_expire", ["broker", "topic", "message"]),
        # subscription: whose delivered copy ends (issue 13: settled per subscription)
        ("mqkit_dead_letter", ["broker", "topic", "message", "reason", "subscription"]),
        ("mqkit_broker_start", ["broker"]),
        ("mqkit_broker_close", ["broker"]),
    ],
)
def test_the_designed_hooks_have_their_designed_arguments(name: str, args: list[str]) -> None:
    assert name in HOOK_NAMES
    assert spec_args(name) == args


def test_firstresult_hooks() -> None:
    firstresult = {name for name in HOOK_NAMES if spec_opts(name).get("firstresult")}
    assert {"mqkit_publish", "mqkit_deliver"} <= firstresult
    assert "mqkit_health" not in firstresult


def test_no_hook_is_historic_or_deprecated() -> None:
    for name in HOOK_NAMES:
        opts = spec_opts(name)
        assert not opts.get("historic"), name
        assert not opts.get("warn_on_impl"), name


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_every_hook_documents_when_it_fires_and_its_call_type(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc, f"{name} has no docstring"
    summary = doc.splitlines()[0]
    assert len(summary.split()) >= 4, f"{name}: the summary should say when it fires: {summary!r}"
    assert summary.endswith("."), f"{name}: {summary!r}"
    assert any(word in doc for word in CALL_TYPES), (
        f"{name}'s docstring names no call type (one of {CALL_TYPES})"
    )


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_firstresult_is_documented_exactly_for_firstresult_hooks(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert ("firstresult" in doc) == bool(spec_opts(name).get("firstresult")), name


# --- the typed facade ----------------------------------------------------------------------------


def facade_name(hook: str) -> str:
    return hook.removeprefix("mqkit_")


@pytest.mark.parametrize("name", HOOK_NAMES)
def test_the_facade_has_a_typed_method_per_hook(name: str) -> None:
    method = getattr(Hooks, facade_name(name), None)
    assert callable(method), f"Hooks has no method {facade_name(name)} for {name}"
    params = list(inspect.signature(method).parameters)
    assert params[0] == "self"
    args = spec_args(name)
    # The hook's arguments, in the hook's order (lifecycle methods may take more after them).
    assert params[1 : 1 + len(args)] == args
    assert method.__doc__ and name in method.__doc__


def test_the_facade_has_nothing_else_that_looks_like_a_hook() -> None:
    hooks = {facade_name(name) for name in HOOK_NAMES}
    public_methods = {
        name for name, value in vars(Hooks).items() if not name.startswith("_") and callable(value)
    }
    assert public_methods - hooks == {
        "calls_any",
        "buffer_wanted",
        "publish_wanted",
        "accept_wanted",
    }
    facade = Hooks(None, lambda plugin, hook, exc: None)
    attributes = {name for name in dir(facade) if not name.startswith("_")}
    assert not [name for name in attributes if name.startswith("mqkit_")]
    flags = {name for name in attributes if name.endswith("_on")}
    assert flags
    assert {flag.removesuffix("_on") for flag in flags} <= hooks
    assert set(facade.impls) == set(HOOK_NAMES)


def test_only_the_facade_calls_the_hook_relay() -> None:
    relay_call = re.compile(r"\bhook\.mqkit_\w+\s*\(|\bhook\.mqkit_\w+\.call")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "mqkit").rglob("*.py"))
        if relay_call.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


# --- documentation -------------------------------------------------------------------------------


def test_docs_hooks_md_mentions_every_hook() -> None:
    doc = ROOT / "docs" / "hooks.md"
    assert doc.is_file(), "docs/hooks.md is missing"
    text = doc.read_text(encoding="utf-8")
    missing = [name for name in HOOK_NAMES if not re.search(rf"\b{name}\b", text)]
    assert missing == []
