"""HTML bodies to plain text; quoted history marked for `strip_quoted` (pure)."""

from __future__ import annotations

import html as html_lib
import re
from html.parser import HTMLParser

from bridge.inbound.quotes import QUOTE_SENTINEL
from bridge.inbound.text import MAX_DECODED_CHARS, WS_RE, one_line, words


class _HtmlToText(HTMLParser):
    _SKIP = words(
        "script style head title template noscript svg math iframe object "
        "textarea select xmp noembed noframes"
    )
    _BLOCK = words(
        "p div tr table ul ol h1 h2 h3 h4 h5 h6 pre hr section article header "
        "footer address dl dt dd"
    )
    _PARAGRAPHS = words("p table ul ol pre h1 h2 h3 h4 h5 h6")
    _QUOTE_MARKERS = (
        "gmail_quote",
        "moz-cite-prefix",
        "yahoo_quoted",
        "divrplyfwdmsg",
        "appendonsend",
        "mail-quote",
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current = ""
        self.prefix = ""
        self.skip = 0
        self.quote = 0
        self.pre = 0
        self.href: str | None = None
        self.link_text = ""

    def _newline(self) -> None:
        self.lines.append(self.prefix + self.current if self.current else "")
        self.current = ""

    def _soft_newline(self) -> None:
        if self.current:
            self._newline()

    def _paragraph(self) -> None:
        self._soft_newline()
        if self.lines and self.lines[-1]:
            self.lines.append("")

    def _write(self, text: str) -> None:
        if not text:
            return
        if not self.current:
            self.prefix = "> " * self.quote
        self.current += text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        marker = " ".join(v or "" for k, v in attrs if k in ("class", "id")).lower()
        if any(m in marker for m in self._QUOTE_MARKERS):
            self._newline()
            self.lines.append(QUOTE_SENTINEL)
        if tag == "br":
            self._newline()
        elif tag == "li":
            self._soft_newline()
            self._write("- ")
        elif tag == "blockquote":
            self._paragraph()
            self.quote += 1
        elif tag in self._BLOCK:
            self._soft_newline()
            if tag == "pre":
                self.pre += 1
        elif tag == "a":
            href = next((v for k, v in attrs if k == "href" and v), None)
            if href and re.match(r"(?i)(https?:|mailto:)", href.strip()):
                self.href = href.strip()
                self.link_text = ""
        elif tag == "img":
            alt = next((v for k, v in attrs if k == "alt" and v), None)
            if alt:
                self._write(f"[{one_line(alt, 80)}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            return  # <svg/> has no content to skip
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag == "blockquote":
            self._paragraph()
            self.quote = max(0, self.quote - 1)
        elif tag in self._PARAGRAPHS:
            self._paragraph()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag in self._BLOCK or tag == "li":
            self._soft_newline()
        elif tag == "a" and self.href:
            if self.href.rstrip("/") not in self.link_text and not self.href.startswith("mailto:"):
                self._write(f" ({self.href})")
            self.href = None

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = WS_RE.sub(" ", data)
            if not self.current:
                data = data.lstrip()
        if self.href is not None:
            self.link_text += data
        parts = data.split("\n")
        for i, chunk in enumerate(parts):
            if i:
                self._newline()
            self._write(chunk)

    def text(self) -> str:
        if self.current:
            self._newline()
        return "\n".join(line.rstrip() for line in self.lines)


def html_to_text(markup: str) -> str:
    """Plain text of an HTML body; quotes become ``> `` lines. Never raises."""
    markup = markup[:MAX_DECODED_CHARS]
    parser = _HtmlToText()
    try:
        parser.feed(markup)
        parser.close()
        return parser.text()
    except Exception:
        stripped = re.sub(r"<[^>]*>", " ", markup)
        return html_lib.unescape(stripped)
