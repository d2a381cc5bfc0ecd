"""An invoice as an A4 PDF (reportlab), with the content of the invoice page.

It renders the `InvoiceView` that the page renders (billing/views_invoices.py), so every figure, date and label
is the page's, in the request's language. Text that Latin-1 can write is set in Helvetica; anything else
(Chinese organisation names, Chinese labels) in STSong-Light, one of the CID fonts every PDF reader has, so no
font file is shipped or embedded.
"""

from __future__ import annotations

import io
from functools import cache
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from django.utils.translation import gettext as _
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT, TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

if TYPE_CHECKING:
    from billing.views_invoices import InvoiceView

CJK_FONT = "STSong-Light"
MARGIN = 18 * mm
WIDTH = A4[0] - 2 * MARGIN
GRID = colors.HexColor("#c8ccd2")
SHADE = colors.HexColor("#f1f3f5")


@cache
def _cjk_font() -> str:
    pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))
    return CJK_FONT


# Characters STSong-Light's Unicode map lacks, and what stands in for them.
CJK_STAND_INS = str.maketrans({"\u00a0": " ", "\u00b7": "\u30fb"})


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _text(text: object, *, size: float = 9, bold: bool = False, align: int = TA_LEFT) -> Paragraph:
    """A paragraph of plain `text` (escaped: names are the customer's) in the font that can write it."""
    value = str(text)
    if _is_latin1(value):
        font = "Helvetica-Bold" if bold else "Helvetica"
    else:
        font = _cjk_font()  # no bold face: size carries the emphasis
        value = value.translate(CJK_STAND_INS)
    style = ParagraphStyle(
        name=f"{font}-{size}-{align}", fontName=font, fontSize=size, leading=size * 1.3, alignment=align
    )
    return Paragraph(escape(value), style)


def _right(text: object, **kwargs) -> Paragraph:
    return _text(text, align=TA_RIGHT, **kwargs)


def _table(rows: list[list], widths: list[float], *, header: bool = True, extra: list | None = None) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    commands = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]
    if header:
        commands += [
            ("BACKGROUND", (0, 0), (-1, 0), SHADE),
            ("LINEBELOW", (0, 0), (-1, 0), 0.6, GRID),
            ("LINEBELOW", (0, 1), (-1, -1), 0.3, GRID),
        ]
    table.setStyle(TableStyle(commands + (extra or [])))
    return table


def _story(doc: InvoiceView) -> list:
    """The invoice's flowables, top to bottom: heading and facts, its lines, the totals, its credit notes."""
    return [*_heading(doc), *_lines_table(doc), _totals_table(doc), *_credit_notes(doc)]


def _heading(doc: InvoiceView) -> list:
    """The title (seller, "Invoice", its number), seller and buyer, and the invoice's facts (period, dates, status)."""
    state = doc.state_label
    if doc.overdue:
        state = f"{state} · {_('Overdue')}"
    story: list = [
        _table(
            [[_text(doc.seller, size=18, bold=True), _right(_("Invoice"), size=18, bold=True)]],
            [WIDTH / 2, WIDTH / 2],
            header=False,
        ),
        _table([[_text(""), _right(doc.number, size=11, bold=True)]], [WIDTH / 2, WIDTH / 2], header=False),
        Spacer(1, 6 * mm),
        _table(
            [
                [_text(_("Seller"), bold=True), _text(_("Buyer"), bold=True)],
                [_text(doc.seller, size=11), _text(doc.buyer, size=11)],
            ],
            [WIDTH / 2, WIDTH / 2],
            header=False,
        ),
        Spacer(1, 4 * mm),
    ]
    facts = [
        (_("Invoice number"), doc.number),
        (_("Period"), doc.period),
        (_("Issued"), doc.issued),
        (_("Due"), doc.due),
        (_("Status"), state),
    ]
    if doc.paid:
        facts.append((_("Paid on"), doc.paid))
    story += [
        _table(
            [[_text(label, bold=True), _text(value)] for label, value in facts],
            [40 * mm, WIDTH - 40 * mm],
            header=False,
        ),
        Spacer(1, 6 * mm),
    ]
    return story


def _lines_table(doc: InvoiceView) -> list:
    """The invoice's lines (with an SLA credit column where any line has one)."""
    head = [_("Description"), _("Quantity"), _("Unit"), _("Unit price"), _("Amount")]
    widths = [62 * mm, 22 * mm, 24 * mm, 33 * mm, 33 * mm]
    if doc.has_sla_credits:
        head.append(_("SLA credit"))
        widths = [50 * mm, 20 * mm, 22 * mm, 28 * mm, 27 * mm, 27 * mm]
    rows: list[list] = [[_text(head[0], bold=True), *(_right(h, bold=True) for h in head[1:])]]
    for line in doc.lines:
        cells = [_text(line.description), _right(line.quantity), _right(line.unit), _right(line.unit_price)]
        cells.append(_right(line.amount))
        if doc.has_sla_credits:
            cells.append(_right(line.sla_credit))
        rows.append(cells)
    return [_table(rows, widths), Spacer(1, 4 * mm)]


def _totals_table(doc: InvoiceView) -> Table:
    """Subtotal, SLA credits, tax and total (ruled above), and what was refunded."""
    totals = [(_("Subtotal"), doc.subtotal, False)]
    if doc.has_credits:
        totals.append((_("SLA credits"), doc.credits, False))
    totals += [(doc.tax_label, doc.tax, False), (_("Total"), doc.total, True)]
    total_row = len(totals) - 1
    if doc.refunded:
        totals.append((_("Refunded"), doc.refunded, False))
    total_rows = [
        [_right(label, bold=bold), _right(value, bold=bold, size=10 if bold else 9)] for label, value, bold in totals
    ]
    rule = [("LINEABOVE", (0, total_row), (-1, total_row), 0.6, GRID)]
    return _table(total_rows, [WIDTH - 45 * mm, 45 * mm], header=False, extra=rule)


def _credit_notes(doc: InvoiceView) -> list:
    """The credit notes against the invoice, under a title; nothing when there are none."""
    if not doc.credit_notes:
        return []
    story: list = [Spacer(1, 6 * mm), _text(_("Credit notes"), size=11, bold=True), Spacer(1, 2 * mm)]
    notes = [[_text(_("Number"), bold=True), _text(_("Date"), bold=True), _text(_("Reason"), bold=True)]]
    notes[0].append(_right(_("Amount"), bold=True))
    for note in doc.credit_notes:
        notes.append([_text(note.number), _text(note.day), _text(note.reason), _right(note.amount)])
    story.append(_table(notes, [30 * mm, 32 * mm, WIDTH - 97 * mm, 35 * mm]))
    return story


def invoice_pdf(doc: InvoiceView) -> bytes:
    """The PDF of `doc` (call it with the request's language active: labels are translated here)."""
    buffer = io.BytesIO()
    footer = _("%(number)s · page %(page)s")

    def on_page(canvas: Canvas, template: SimpleDocTemplate) -> None:
        text = footer % {"number": doc.number, "page": canvas.getPageNumber()}
        latin = _is_latin1(text)
        canvas.saveState()
        canvas.setFont("Helvetica" if latin else _cjk_font(), 8)
        canvas.setFillColor(colors.grey)
        canvas.drawRightString(A4[0] - MARGIN, 10 * mm, text if latin else text.translate(CJK_STAND_INS))
        canvas.restoreState()

    template = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=f"{_('Invoice')} {doc.number}",
        author=doc.seller,
        subject=doc.period,
        creator=doc.seller,
    )
    template.build(_story(doc), onFirstPage=on_page, onLaterPages=on_page)
    return buffer.getvalue()
