"""docs/plugins.md documents every hook of ``dkron.hookspecs`` by its exact signature, and no other.

Like datasette's ``test_docs.py``: a hook added to the specs without a ``### name(args)`` heading
under ``## Hooks``, a heading left behind after a rename or a change of arguments, or a
``dkron_*(...)`` call in the text or examples that names no hook, fails.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from dkron import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*$", re.MULTILINE)
CODE_BLOCK = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: A hook-like name in a heading: ``dkron_something(...)``.
HOOK_HEADING = re.compile(r"`?(dkron_[A-Za-z0-9_]+)\(.*\)`?")
#: A hook-like call anywhere in the doc, prose or code: ``dkron_something(``.
CALL = re.compile(r"\b(dkron_[A-Za-z0-9_]+)\(")


def hook_signatures() -> dict[str, str]:
    """``{name: "name(arg, ...)"}`` for every hookspec, from ``inspect.signature`` of the spec."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    signatures = {}
    for name, caller in vars(pm.hook).items():
        if not isinstance(caller, pluggy.HookCaller) or caller.spec is None:
            continue
        sig = inspect.signature(caller.spec.function)
        bare = sig.replace(
            parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
            return_annotation=inspect.Signature.empty,
        )
        signatures[name] = f"{name}{bare}"
    return signatures


HOOKS = hook_signatures()


def headings(text: str) -> list[tuple[str, str]]:
    """``(section, title)`` of every ``###`` heading; section is the ``##`` heading above it."""
    found: list[tuple[str, str]] = []
    section = ""
    for hashes, title in HEADING.findall(CODE_BLOCK.sub("", text)):  # "# comment" in code is no heading
        title = title.strip("`")
        if len(hashes) <= 2:
            section = title
        elif len(hashes) == 3:
            found.append((section, title))
    return found


def problems(text: str) -> list[str]:
    """Everything wrong with ``text`` as the documentation of :data:`HOOKS`."""
    out = []
    hook_headings = [title for section, title in headings(text) if section == "Hooks"]
    for name, signature in sorted(HOOKS.items()):
        count = hook_headings.count(signature)
        if count != 1:
            out.append(f"hook {name}: expected one heading '### {signature}' under '## Hooks', found {count}")
    for section, title in headings(text):
        match = HOOK_HEADING.fullmatch(title)
        if match and title not in HOOKS.values():
            name = match.group(1)
            what = f"the hook is {HOOKS[name]}" if name in HOOKS else "no such hook"
            out.append(f"heading '### {title}' under '## {section}': {what}")
    for name in sorted(set(CALL.findall(text)) - set(HOOKS)):
        out.append(f"{name}(...) is named in the doc but dkron.hookspecs has no such hook")
    return out


def test_the_specs_define_the_registration_hooks() -> None:
    assert HOOKS["dkron_register_executors"] == "dkron_register_executors(registry)"
    assert HOOKS["dkron_register_processors"] == "dkron_register_processors(registry)"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_heading_with_its_exact_signature(name: str) -> None:
    expected = ("Hooks", HOOKS[name])
    assert expected in headings(DOC.read_text()), f"docs/plugins.md needs '### {HOOKS[name]}' under '## Hooks'"


def test_the_doc_has_no_problem() -> None:
    assert problems(DOC.read_text()) == []


def test_a_missing_renamed_or_invented_hook_is_caught() -> None:
    """The check is not vacuous: each kind of mistake in the doc is reported."""
    text = DOC.read_text()
    heading = f"### {HOOKS['dkron_register_executors']}"
    assert heading in text
    missing = problems(text.replace(heading, "### Registering executors"))
    assert missing == [
        "hook dkron_register_executors: expected one heading "
        "'### dkron_register_executors(registry)' under '## Hooks', found 0"
    ]
    changed = problems(text.replace(heading, "### dkron_register_executors(registry, settings)"))
    assert "heading '### dkron_register_executors(registry, settings)' under '## Hooks': " in "\n".join(changed)
    fake = "### dkron_before_execution(request)\n\nCall `dkron_after_exec(x)`.\n"
    invented = problems(text.replace("## Hooks\n", f"## Hooks\n\n{fake}", 1))
    assert invented == [
        "heading '### dkron_before_execution(request)' under '## Hooks': no such hook",
        "dkron_after_exec(...) is named in the doc but dkron.hookspecs has no such hook",
        "dkron_before_execution(...) is named in the doc but dkron.hookspecs has no such hook",
    ]
