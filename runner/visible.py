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

# C0 but tab and newline, DEL, C1, the Unicode line and paragraph separators; every format
# character (category Cf: bidi controls, zero-width characters, tags, soft hyphen, Arabic and
# Egyptian format marks, interlinear annotations) and every other default-ignorable one, which
# renders as nothing (variation selectors, Hangul fillers, U+034F, U+17B4-5, U+180B-F, U+2065,
# U+FFF0-8), from Unicode 15's tables (Cf as Python 3.11's unicodedata has it).
CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891"
    "\u08e2\u115f-\u1160\u17b4-\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def visible(text: str) -> str:
    """`text` with each `CONTROL` character as its escape (`\\x1b`, `\\u202e`)."""
    return CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
            else f"\\U{code:08x}")
