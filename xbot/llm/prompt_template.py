"""Prompt templates: a system text with named placeholders, checked when saved, rendered safely.

Placeholders are `{name}` with a name from `PLACEHOLDERS`; `{{` and `}}` are literal braces. Nothing
else is accepted: no attribute or index access (`{mention.__class__}`, `{thread[0]}`), no conversion
(`{author!r}`) and no format spec (`{persona:>999999}`), so a template can neither reach into Python
objects nor blow up the text. Rendering substitutes each value once: braces inside a value are never
read as placeholders.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

PLACEHOLDERS: dict[str, str] = {
    "persona": "the bot's persona text (the operator's, trusted)",
    "bot_username": "the bot's handle on X",
    "author": "the mention's author: handle, name and bio (untrusted, as JSON)",
    "thread": "the posts above the mention, oldest first (untrusted, as JSON)",
    "mention": "the text of the mention (untrusted, as JSON)",
    "image_descriptions": "alt texts and the vision model's description of the mention's images"
    " (untrusted, as JSON)",
}

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """The template cannot be used as given; the message names the problem (and the placeholder)."""


def placeholders(text: str) -> list[str]:
    """The placeholders `text` uses, in order of first use; `TemplateError` when one is unknown,
    uses attribute/index access, a conversion or a format spec, or when a brace is unbalanced."""
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as error:
        raise TemplateError(f"{error} (write {{{{ and }}}} for literal braces)") from None
    used: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "":
            raise TemplateError("empty placeholder {} (name one of: " + ", ".join(PLACEHOLDERS) + ")")
        if field not in PLACEHOLDERS:
            raise TemplateError(
                f"unknown placeholder {{{field}}} (known: {', '.join('{' + name + '}' for name in PLACEHOLDERS)})"
            )
        if conversion is not None or spec:
            raise TemplateError(f"placeholder {{{field}}} cannot have a conversion or format spec")
        if field not in used:
            used.append(field)
    return used


def render(text: str, values: Mapping[str, str]) -> str:
    """`text` with each placeholder replaced by its value (missing values: empty)."""
    placeholders(text)  # the same checks as when saved: a stored template is still refused if bad
    out: list[str] = []
    for literal, field, _spec, _conversion in _FORMATTER.parse(text):
        out.append(literal)
        if field is not None:
            out.append(values.get(field, ""))
    return "".join(out)
