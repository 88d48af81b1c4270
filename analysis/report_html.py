"""report.html: report.md rendered for a browser, in one file that needs nothing else.

The Markdown that report.py writes is the one source: markdown-it-py parses it (raw HTML off, so
any text from a spec or an error message is escaped), the figures it links become base64 data URIs
and the small files it links (table.csv, table.tex) become data-URI downloads. The page has inline
CSS (readable width, figures at most the column's width, tables that scroll sideways on a narrow
screen, a print layout) and a small inline script that sorts a table by the header clicked (numbers
by value: "86.61 ± 0.50" as 86.61; "–"/"—"/empty last). A Content-Security-Policy in the page
allows nothing but its own inline style and script (by hash) and data: images, so it loads nothing
from anywhere, offline or not.
"""

from __future__ import annotations

import base64
import hashlib
import html
import mimetypes
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

from vggbn.files import write_atomic

MAX_LINKED_BYTES = 2_000_000  # a linked file larger than this stays a relative link, not embedded
WRAP_CHARS = 40  # a table cell longer than this may wrap; shorter ones ("86.61 ± 0.50") stay on a line

CSS = """
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --head: #f6f8fa;
  --stripe: #fafbfc; --accent: #0969da; --note: #fff8c5; --note-line: #d4a72c; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 16px/1.55 system-ui, -apple-system,
  "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.9rem; line-height: 1.25; margin: .4em 0 .6em; }
h2 { font-size: 1.4rem; margin: 2.2em 0 .7em; padding-bottom: .25em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.15rem; margin: 1.6em 0 .5em; }
p, li, blockquote { max-width: 80ch; }
ul { padding-left: 1.4em; } li { margin: .25em 0; }
a { color: var(--accent); }
code { font: .9em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--head);
  padding: .1em .3em; border-radius: 4px; }
blockquote { margin: .8em 0; padding: .5em 1em; background: var(--note); border-left: 4px solid var(--note-line);
  border-radius: 0 4px 4px 0; }
blockquote p { margin: .2em 0; }
nav.toc { font-size: .92rem; margin: 0 0 1.5em; padding: .6em 1em; background: var(--head);
  border: 1px solid var(--line); border-radius: 6px; }
nav.toc ol { margin: .3em 0 0; padding-left: 1.6em; columns: 2 18em; }
nav.toc li { margin: .1em 0; }
.table-scroll { overflow-x: auto; width: fit-content; max-width: 100%; margin: 1em 0 1.2em;
  border: 1px solid var(--line); border-radius: 6px; }
.table-scroll:focus-visible { outline: 2px solid var(--accent); }
table { border-collapse: collapse; font-size: .86rem; line-height: 1.4; font-variant-numeric: tabular-nums; }
th, td { padding: .4em .7em; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--head); font-weight: 600; vertical-align: bottom; }
tbody tr:nth-child(even) { background: var(--stripe); }
tbody tr:hover { background: #eef4fb; }
tbody tr:last-child td { border-bottom: 0; }
td.r, th.r { text-align: right; }
td.c, th.c { text-align: center; }
td { white-space: nowrap; }
td.wrap { white-space: normal; min-width: 16em; max-width: 36em; }
th { min-width: 5em; } th.long { min-width: 8.5em; } th.longer { min-width: 11em; }
th button { all: unset; cursor: pointer; display: inline-flex; gap: .3em; align-items: baseline; }
th button::after { content: "\\2195"; color: var(--muted); opacity: .55; font-size: .85em; }
th[aria-sort="ascending"] button::after { content: "\\25B2"; opacity: 1; color: var(--accent); }
th[aria-sort="descending"] button::after { content: "\\25BC"; opacity: 1; color: var(--accent); }
th button:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; border-radius: 2px; }
figure { margin: 1.2em 0 1.6em; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figure.zoomable img { cursor: zoom-in; }
figure.zoomed { overflow-x: auto; }
figure.zoomed img { max-width: none; cursor: zoom-out; }
figcaption { color: var(--muted); font-size: .9rem; text-align: center; margin-top: .4em; }
.missing { color: #a40e26; }
@media (max-width: 700px) { main { padding: 1rem; } body { font-size: 15px; } }
@media print {
  body { font-size: 10.5pt; } main { max-width: none; padding: 0; }
  nav.toc, th button::after { display: none; }
  .table-scroll { overflow: visible; border: 0; }
  table { font-size: 7pt; width: 100%; } tbody tr:hover { background: none; }
  th, td, td.wrap, th.long, th.longer { white-space: normal; min-width: 0; padding: .25em .35em; }
  figure, tr, blockquote { break-inside: avoid; } h2, h3 { break-after: avoid; }
  figure.zoomed img { max-width: 100%; }
  a { color: inherit; text-decoration: none; }
}
"""

# Sorts each table by the header clicked (a button, so Tab/Enter/Space work): ascending,
# descending, then back to the original order. A column sorts by number when every filled cell
# starts with one; empty and dash cells ("–", "—", "-") go last in either direction.
SCRIPT = """
(function () {
  "use strict";
  var NONE = /^[\\s\\u2013\\u2014-]*$/;
  var NUM = /^[<>\\u2264\\u2265~\\u2248(\\[]?\\s*([+\\-\\u2212]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:e[+\\-]?\\d+)?)/i;
  function key(cell) {
    var t = cell.textContent.trim();
    if (NONE.test(t)) return null;
    var m = NUM.exec(t.replace(/(\\d),(?=\\d{3}\\b)/g, "$1"));
    return {text: t, num: m ? parseFloat(m[1].replace("\\u2212", "-")) : NaN};
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var order = {none: "ascending", ascending: "descending", descending: "none"}[
      th.getAttribute("aria-sort") || "none"];
    var keys = rows.map(function (r) { return r.cells[col] ? key(r.cells[col]) : null; });
    var numeric = keys.every(function (k) { return k === null || !isNaN(k.num); });
    var idx = rows.map(function (r, i) { return i; });
    var sign = order === "descending" ? -1 : 1;
    idx.sort(function (a, b) {
      if (order === "none") return rows[a]._pos - rows[b]._pos;
      var ka = keys[a], kb = keys[b];
      if (ka === null || kb === null) return ka === kb ? rows[a]._pos - rows[b]._pos : ka === null ? 1 : -1;
      var c = numeric ? ka.num - kb.num
        : ka.text.localeCompare(kb.text, undefined, {numeric: true, sensitivity: "base"});
      return c ? sign * c : rows[a]._pos - rows[b]._pos;
    });
    idx.forEach(function (i) { body.appendChild(rows[i]); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    if (order !== "none") th.setAttribute("aria-sort", order);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table"), function (table) {
    if (!table.tHead || !table.tBodies.length || table.tBodies[0].rows.length < 2) return;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r, i) { r._pos = i; });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      var b = document.createElement("button");
      b.type = "button";
      while (th.firstChild) b.appendChild(th.firstChild);
      b.title = "Sort by " + b.textContent.trim();
      b.addEventListener("click", function () { sortBy(table, col, th); });
      th.appendChild(b);
    });
  });
  // A figure drawn wider than the column: a click shows it at full size (and back).
  Array.prototype.forEach.call(document.querySelectorAll("figure img"), function (img) {
    function mark() {
      if (img.naturalWidth > img.clientWidth + 1) img.parentNode.classList.add("zoomable");
    }
    if (img.complete) mark(); else img.addEventListener("load", mark);
    img.addEventListener("click", function () {
      var f = img.parentNode;
      if (f.classList.contains("zoomable") || f.classList.contains("zoomed")) {
        f.classList.toggle("zoomed");
        f.classList.toggle("zoomable");
      }
    });
  });
}());
"""

_MAGIC = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
          b"GIF89a": "image/gif"}


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _local(ref: str, base: Path) -> Path | None:
    """The file a relative reference names, if it exists inside `base` (the report's folder);
    None for a URL with a scheme, an absolute path, or anything outside the folder."""
    parts = urlsplit(ref)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return None
    path = (base / unquote(parts.path)).resolve()
    root = base.resolve()
    return path if path.is_file() and (path == root or root in path.parents) else None


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _image_uri(path: Path) -> str | None:
    data = path.read_bytes()
    mime = next((m for magic, m in _MAGIC.items() if data.startswith(magic)), None)
    if mime is None and path.suffix.lower() == ".svg":
        mime = "image/svg+xml"
    return _data_uri(data, mime) if mime else None


def _text(token: Token) -> str:
    """An inline token's plain text (emphasis and code marks dropped)."""
    return "".join(c.content for c in token.children or [] if c.type in ("text", "code_inline"))


def _slug(text: str, seen: set[str]) -> str:
    s = re.sub(r"[^\w]+", "-", text.lower()).strip("-") or "section"
    slug, i = s, 2
    while slug in seen:
        slug, i = f"{s}-{i}", i + 1
    seen.add(slug)
    return slug


def _embed(tokens: list[Token], base: Path) -> None:
    """Figures -> data URIs; small linked files -> data-URI downloads; a paragraph that is one
    image -> <figure>; column alignment -> a class (no inline style: the page's CSP forbids it)."""
    for i, tok in enumerate(tokens):
        if tok.type in ("th_open", "td_open"):
            style = tok.attrs.pop("style", None)
            cls = {"text-align:right": "r", "text-align:center": "c"}.get(style or "", "")
            if tok.type == "td_open" and len(tokens[i + 1].content) > WRAP_CHARS:
                cls += " wrap"  # a long cell (a setup, an error) wraps; numbers and labels do not
            elif tok.type == "th_open" and len(tokens[i + 1].content) > 12:
                # a long header over a narrow column: wider, not five lines tall
                cls += " longer" if len(tokens[i + 1].content) > 24 else " long"
            if cls.strip():
                tok.attrSet("class", cls.strip())
        if tok.type != "inline" or not tok.children:
            continue
        kids = tok.children
        for j, child in enumerate(kids):
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                path = _local(src, base)
                uri = _image_uri(path) if path else None
                if uri:
                    child.attrSet("src", uri)
                else:  # never a reference the page would fetch: say what is missing instead
                    kids[j] = Token("html_inline", "", 0, content=(
                        f'<span class="missing">[figure not embedded: {html.escape(_text(child))} '
                        f"({html.escape(src)})]</span>"))
            elif child.type == "link_open":
                href = str(child.attrGet("href") or "")
                path = _local(href, base)
                if path and path.stat().st_size <= MAX_LINKED_BYTES:
                    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                    child.attrSet("href", _data_uri(path.read_bytes(), mime))
                    child.attrSet("download", path.name)
                elif urlsplit(href).scheme in ("http", "https"):
                    child.attrSet("rel", "noopener noreferrer")
        if (len(kids) == 1 and kids[0].type == "image" and 0 < i < len(tokens) - 1
                and tokens[i - 1].type == "paragraph_open" and tokens[i + 1].type == "paragraph_close"):
            tokens[i - 1].tag = tokens[i + 1].tag = "figure"


_MD_PUNCTUATION = set("\\`*_{}[]()#+-.!|<>~&")


def markdown_text(value: object) -> str:
    """A spec's free text (description, name) as literal text in report.md, and so in report.html:
    every Markdown punctuation character backslash-escaped (CommonMark renders it as itself), lines
    joined. `[text](https://elsewhere)` stays that text, never a link; `<b>` stays those characters."""
    return "".join(f"\\{c}" if c in _MD_PUNCTUATION else c for c in " ".join(str(value).split()))


def _markdown() -> MarkdownIt:
    # js-default: CommonMark + tables + strikethrough, raw HTML escaped, no linkify/typographer.
    md = MarkdownIt("js-default")

    def table_open(self, tokens, idx, options, env):
        label = html.escape(tokens[idx].meta.get("section") or "table", quote=True)
        return (f'<div class="table-scroll" tabindex="0" role="region" aria-label="{label}">'
                + self.renderToken(tokens, idx, options, env))

    def table_close(self, tokens, idx, options, env):
        return self.renderToken(tokens, idx, options, env) + "</div>\n"

    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    return md


def render(markdown: str, base: Path) -> str:
    """The whole page for the Markdown `markdown` whose relative links point into `base`."""
    md = _markdown()
    tokens = md.parse(markdown)
    _embed(tokens, Path(base))
    title, sections, seen, section = None, [], set(), None
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.level == 0:
            text = _text(tokens[i + 1])
            if tok.tag == "h1" and title is None:
                title = text
            elif tok.tag == "h2":
                tok.attrSet("id", _slug(text, seen))
                sections.append((tok.attrGet("id"), text))
                section = text
        elif tok.type == "table_open":  # its scroll region is labelled by the section's title
            tok.meta["section"] = section
    body = md.renderer.render(tokens, md.options, {})
    if len(sections) >= 3:  # a list of the sections, after the title and the notes under it
        items = "".join(f'<li><a href="#{html.escape(s, quote=True)}">{html.escape(t)}</a></li>'
                        for s, t in sections)
        at = body.find("<h2 ")
        body = (body[:at] + f'<nav class="toc" aria-label="Sections"><strong>Sections</strong>'
                f"<ol>{items}</ol></nav>\n" + body[at:])
    csp = (f"default-src 'none'; img-src data:; style-src {_sha256(CSS)}; script-src {_sha256(SCRIPT)}; "
           "base-uri 'none'; form-action 'none'")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title or 'vggbn report')}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n")


def write_html(md_path: str | Path) -> Path:
    """report.html beside a report.md written earlier, from its text alone (`vggbn report` renders
    the text it has just written, without reading it back)."""
    md_path = Path(md_path)
    return write_atomic(md_path.with_suffix(".html"), render(md_path.read_text(encoding="utf-8"), md_path.parent))
