"""User-facing errors: one line that names the fix; the CLI turns them into exit code 2."""

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input or a missing prerequisite the user can fix (never a bug in the harness)."""


def unknown(kind: str, name: str, valid: Iterable[str], hint: str = "") -> UserError:
    """`unknown method 'adamol' (did you mean 'adamole'?); valid: lora, mole, ...`."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    suggestion = f" (did you mean '{close[0]}'?)" if close else ""
    tail = f"; {hint}" if hint else ""
    return UserError(f"unknown {kind} '{name}'{suggestion}; valid: {', '.join(valid)}{tail}")
