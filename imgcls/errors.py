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


def first_sentence(e: BaseException | str) -> str:
    """A library's message quoted whole by its first sentence (or its first line, when that holds no sentence
    end), never cut at a character count; its final full stop dropped, as it is quoted inside ours.

    A sentence ends at '.', '!' or '?' outside brackets, followed by a space and a capital letter, so
    'e.g., ./mlruns' and '(Caused by X. Y)' do not end one. A message with no text gives the error's type name.
    """
    text = str(e)
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    if not line:
        return type(e).__name__ if isinstance(e, BaseException) else ""
    depth = 0
    for i, ch in enumerate(line):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch in ".!?" and depth == 0 and line[i + 1:i + 2] == " " and line[i + 2:i + 3].isupper():
            return line[:i] if ch == "." else line[:i + 1]
    return line[:-1] if line.endswith(".") and not line.endswith("..") else line
