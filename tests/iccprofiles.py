"""Matrix/TRC RGB ICC profiles (v2) for tests: the colour spaces cameras and phones embed, made here because
the corpus' only profile is sRGB. Colorants are the published D50-adapted values of each space."""

from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _srgb_curve(v: float) -> float:
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _curve(gamma: float | None) -> bytes:
    """A curveType: a pure gamma, or (None) the sRGB curve as a 1024-entry table."""
    if gamma is not None:
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    table = [round(_srgb_curve(i / 1023) * 65535) for i in range(1024)]
    return b"curv\0\0\0\0" + struct.pack(f">I{len(table)}H", len(table), *table)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)


def rgb_profile(name: str, red: tuple[float, float, float], green: tuple[float, float, float],
                blue: tuple[float, float, float], gamma: float | None) -> bytes:
    tags = [(b"desc", _desc(name)), (b"cprt", b"text\0\0\0\0no copyright, test data\0"), (b"wtpt", _xyz(*D50)),
            (b"rXYZ", _xyz(*red)), (b"gXYZ", _xyz(*green)), (b"bXYZ", _xyz(*blue))]
    curve = _curve(gamma)
    tags += [(b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        while (offset + len(data)) % 4:
            data += b"\0"
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 24 + b"\0\0\0\0" + _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2]) + b"none")
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + table + data


ADOBE_RGB = rgb_profile("Adobe RGB (1998) test copy", (0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609),
                        (0.1492, 0.0632, 0.7446), 563 / 256)
DISPLAY_P3 = rgb_profile("Display P3 test copy", (0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419),
                         (0.1571, 0.0666, 0.7841), None)
PROPHOTO_RGB = rgb_profile("ProPhoto RGB test copy", (0.7977, 0.2880, 0.0), (0.1352, 0.7119, 0.0),
                           (0.0313, 0.0001, 0.8249), 1.8)
LINEAR_SRGB = rgb_profile("linear sRGB test copy", (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971),
                          (0.1431, 0.0606, 0.7141), 1.0)
