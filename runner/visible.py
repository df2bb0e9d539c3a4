"""Text from a post or a kernel, shown as it is: every character that would act instead of show
(on a terminal, in a log, in a report, in a post) written as its escape. Pure.

ESC starts colours, cursor moves and OSC strings (a title, a hyperlink, OSC 52: a write to the
reader's clipboard), so a red run could be repainted green; BEL, NUL, backspace and C1 controls
act too; bidi controls reorder the text around them (Trojan Source) and zero-width and tag
characters hide text. Each becomes what Python writes in a string: `\\x1b`, `\\u202e`,
`\\U000e0041`. Tab and newline stay (a traceback, a diff, output keep their lines).
"""

from __future__ import annotations

import re

# C0 but tab and newline, DEL, C1, the Unicode line and paragraph separators; bidi controls
# (U+061C, U+200E/F, U+202A-E, U+2066-9), zero-width characters (U+200B-D, U+2060, U+FEFF) and
# tag characters (U+E0000-E007F).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060"
                     "\u2066-\u2069\ufeff\U000e0000-\U000e007f]")


def visible(text: str) -> str:
    """`text` with each `CONTROL` character as its escape (`\\x1b`, `\\u202e`)."""
    return CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
            else f"\\U{code:08x}")
