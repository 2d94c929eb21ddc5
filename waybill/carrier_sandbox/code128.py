"""Code 128, subset B: the barcode printed on sandbox labels.

A symbol is a start character, one character per data byte, a modulo-103 check
character and the stop pattern. Each character is three bars and three spaces,
11 modules in all; the stop pattern carries a final bar and is 13 modules.
"""

from __future__ import annotations

# Widths (bar, space, bar, space, bar, space) of the values 0..105, from the
# Code 128 symbology specification (ISO/IEC 15417, table 1).
_PATTERNS: tuple[str, ...] = (
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312",
    "132212", "221213", "221312", "231212", "112232", "122132", "122231", "113222",
    "123122", "123221", "223211", "221132", "221231", "213212", "223112", "312131",
    "311222", "321122", "321221", "312212", "322112", "322211", "212123", "212321",
    "232121", "111323", "131123", "131321", "112313", "132113", "132311", "211313",
    "231113", "231311", "112133", "112331", "132131", "113123", "113321", "133121",
    "313121", "211331", "231131", "213113", "213311", "213131", "311123", "311321",
    "331121", "312113", "312311", "332111", "314111", "221411", "431111", "111224",
    "111422", "121124", "121421", "141122", "141221", "112214", "112412", "122114",
    "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111",
    "111242", "121142", "121241", "114212", "124112", "124211", "411212", "421112",
    "421211", "212141", "214121", "412121", "111143", "111341", "131141", "114113",
    "114311", "411113", "411311", "113141", "114131", "311141", "411131", "211412",
    "211214", "211232",
)  # fmt: skip
_STOP = "2331112"
START_B = 104
STOP = 106


class Code128Error(ValueError):
    """The text cannot be written in subset B (only printable ASCII can)."""


def code128b_values(text: str) -> list[int]:
    """Symbol values of `text` in subset B: data only, without start, check or stop."""
    if not text:
        raise Code128Error("nothing to encode")
    values = []
    for char in text:
        code = ord(char)
        if not 32 <= code <= 127:
            raise Code128Error(f"{char!r} is not in Code 128 subset B")
        values.append(code - 32)
    return values


def code128b_checksum(text: str) -> int:
    """The check value: start value plus each data value times its 1-based position, mod 103."""
    total = START_B + sum(
        position * value for position, value in enumerate(code128b_values(text), start=1)
    )
    return total % 103


def code128b_symbols(text: str) -> list[int]:
    """Every symbol value in printing order: start B, data, check value, stop."""
    return [START_B, *code128b_values(text), code128b_checksum(text), STOP]


def code128b_widths(text: str) -> list[int]:
    """Module widths in printing order, starting with a bar and alternating bar, space."""
    widths: list[int] = []
    for value in code128b_symbols(text):
        pattern = _STOP if value == STOP else _PATTERNS[value]
        widths.extend(int(digit) for digit in pattern)
    return widths


def code128b_bits(text: str) -> str:
    """The symbol as a string of modules, `1` for bar and `0` for space (no quiet zones)."""
    return "".join(
        ("1" if index % 2 == 0 else "0") * width
        for index, width in enumerate(code128b_widths(text))
    )
