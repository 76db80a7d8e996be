"""Real documents of every supported format, written by the libraries that make them (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import docx
import openpyxl
from fpdf import FPDF
from pptx import Presentation
from pptx.util import Inches


def write_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def write_docx(path: Path, heading: str, body: str) -> Path:
    document = docx.Document()
    document.add_heading(heading, level=1)
    document.add_paragraph(body)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "cell one"
    table.rows[0].cells[1].text = "cell two"
    document.save(str(path))
    return path


def write_pptx(path: Path, slides: list[tuple[str, str]]) -> Path:
    deck = Presentation()
    for title, body in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[5])  # title only
        slide.shapes.title.text = title
        box = slide.shapes.add_textbox(Inches(1), Inches(2), Inches(6), Inches(2))
        box.text_frame.text = body
    deck.save(str(path))
    return path


def write_xlsx(path: Path, rows: list[list[object]]) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Inventory"
    for row in rows:
        sheet.append(row)
    book.save(str(path))
    return path


def write_all(folder: Path) -> dict[str, tuple[Path, str]]:
    """One file per format, each holding a unique phrase; returns {ext: (path, phrase)}."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[Path, str]] = {}

    def text(name: str, content: str, phrase: str) -> None:
        path = folder / name
        path.write_text(content, encoding="utf-8")
        made[path.suffix] = (path, phrase)

    text("notes.txt", "The lighthouse keeper polishes the brass lantern every Tuesday.", "brass lantern")
    text("guide.md", "# Guide\n\nThe violet submarine docks at pier nine.\n", "violet submarine")
    text("manual.rst", "Manual\n======\n\nThe copper kettle whistles at dawn.\n", "copper kettle")
    text("table.csv", "animal,habitat\nnarwhal,arctic fjords\n", "narwhal")
    text("data.json", json.dumps({"recipe": "saffron risotto with parmesan"}), "saffron risotto")
    text(
        "page.html",
        "<html><head><title>Harbour page</title><script>var secret='x';</script></head>"
        "<body><h1>Harbour</h1><p>The tangerine ferry leaves at noon.</p></body></html>",
        "tangerine ferry",
    )
    made[".pdf"] = (
        write_pdf(folder / "report.pdf", ["Intro page about nothing.", "The obsidian glacier melts slowly."]),
        "obsidian glacier",
    )
    made[".docx"] = (
        write_docx(folder / "memo.docx", "Memo", "The marble fountain sings in spring."),
        "marble fountain",
    )
    made[".pptx"] = (
        write_pptx(
            folder / "deck.pptx", [("Welcome", "hello"), ("Findings", "The crimson kite flies high.")]
        ),
        "crimson kite",
    )
    made[".xlsx"] = (
        write_xlsx(folder / "stock.xlsx", [["item", "count"], ["walnut chairs", 12]]),
        "walnut chairs",
    )
    return made
