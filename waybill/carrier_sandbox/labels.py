"""Shipping labels as small, valid PDF 1.4 documents, written by hand.

One 4 x 6 inch page: carrier and service, destination postal code and country,
the tracking number as a Code 128 (subset B) barcode drawn with filled
rectangles, and the tracking number in print below it. Only the standard
Helvetica fonts are used, so nothing needs embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

from waybill.carrier_sandbox.code128 import code128b_widths

PAGE_WIDTH = 288  # points: 4 inches
PAGE_HEIGHT = 432  # 6 inches
MARGIN = 18
QUIET_ZONE_MODULES = 10
BARCODE_HEIGHT = 80.0


@dataclass(frozen=True, slots=True)
class LabelContent:
    carrier: str
    service: str
    tracking_number: str
    destination_postal_code: str
    destination_country: str
    destination_city: str | None = None
    reference: str | None = None
    shipment_id: str | None = None


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsiEncoding; what it cannot show becomes '?'."""
    raw = text.encode("cp1252", errors="replace")
    escaped = raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    escaped = escaped.replace(b"\r", b" ").replace(b"\n", b" ")
    return b"(" + escaped + b")"


def _number(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _text(font: str, size: float, x: float, y: float, text: str) -> bytes:
    return (
        f"BT /{font} {_number(size)} Tf {_number(x)} {_number(y)} Td ".encode()
        + _pdf_string(text)
        + b" Tj ET\n"
    )


def barcode_rectangles(
    text: str, *, x: float, y: float, max_width: float, height: float
) -> list[tuple[float, float, float, float]]:
    """The bars of the Code 128 symbol of `text` as (x, y, width, height), quiet zones included."""
    widths = code128b_widths(text)
    modules = sum(widths) + 2 * QUIET_ZONE_MODULES
    module = min(1.5, max_width / modules)
    left = x + (max_width - modules * module) / 2 + QUIET_ZONE_MODULES * module
    bars = []
    for index, width in enumerate(widths):
        if index % 2 == 0:  # even positions are bars, odd ones spaces
            bars.append((left, y, width * module, height))
        left += width * module
    return bars


def _content_stream(label: LabelContent) -> bytes:
    top = PAGE_HEIGHT - MARGIN
    parts = [
        b"0 g\n",
        # A frame around the label and rules between its sections.
        (
            f"1 w {MARGIN / 2} {MARGIN / 2} {PAGE_WIDTH - MARGIN} {PAGE_HEIGHT - MARGIN} re S\n"
        ).encode(),
        _text("F2", 22, MARGIN, top - 22, label.carrier.upper()),
        _text("F1", 12, MARGIN, top - 40, f"Service: {label.service}"),
        f"{MARGIN} {top - 52} m {PAGE_WIDTH - MARGIN} {top - 52} l S\n".encode(),
        _text("F1", 10, MARGIN, top - 70, "SHIP TO"),
        _text(
            "F2",
            28,
            MARGIN,
            top - 102,
            f"{label.destination_country} {label.destination_postal_code}",
        ),
    ]
    if label.destination_city:
        parts.append(_text("F1", 14, MARGIN, top - 122, label.destination_city))
    parts.append(f"{MARGIN} {top - 134} m {PAGE_WIDTH - MARGIN} {top - 134} l S\n".encode())
    parts.append(_text("F1", 10, MARGIN, top - 152, "TRACKING NUMBER"))
    barcode_y = top - 164 - BARCODE_HEIGHT
    for bar_x, bar_y, width, height in barcode_rectangles(
        label.tracking_number,
        x=MARGIN,
        y=barcode_y,
        max_width=PAGE_WIDTH - 2 * MARGIN,
        height=BARCODE_HEIGHT,
    ):
        parts.append(
            f"{_number(bar_x)} {_number(bar_y)} {_number(width)} {_number(height)} re f\n".encode()
        )
    parts.append(_text("F2", 16, MARGIN, barcode_y - 22, label.tracking_number))
    footer_y = MARGIN + 8
    if label.reference:
        parts.append(_text("F1", 9, MARGIN, footer_y + 14, f"Ref: {label.reference}"))
    if label.shipment_id:
        parts.append(_text("F1", 7, MARGIN, footer_y, f"Shipment {label.shipment_id}"))
    parts.append(_text("F1", 7, PAGE_WIDTH - MARGIN - 78, footer_y, "SANDBOX - NOT VALID"))
    return b"".join(parts)


def render_label_pdf(label: LabelContent) -> bytes:
    content = _content_stream(label)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
            "/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>"
        ).encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream",
        b"<< /Title "
        + _pdf_string(f"{label.carrier} label {label.tracking_number}")
        + b" /Producer (Waybill carrier sandbox) >>",
    ]
    # The binary comment after the header tells tools the file holds 8-bit data.
    document = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(document))
        document += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_offset = len(document)
    # Each cross-reference entry is exactly 20 bytes, its end of line included.
    document += f"xref\n0 {len(objects) + 1}\n".encode()
    document += b"0000000000 65535 f \n"
    for offset in offsets:
        document += f"{offset:010d} 00000 n \n".encode()
    document += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\n"
        f"startxref\n{xref_offset}\n%%EOF"
    ).encode()
    return bytes(document)
