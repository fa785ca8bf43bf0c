"""User-facing errors: one sentence that names the thing and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A mistake in the user's input (path, config key, name). The CLI prints it and exits with status 2."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Error for an unknown registry name, listing the valid ones with a did-you-mean."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = ", ".join(valid) if len(valid) <= 30 else ", ".join(valid[:30]) + ", ..."
    return UserError(f"unknown {kind} '{name}'{hint}; valid choices: {shown}.")
