"""Tiny HTML helpers and the page shell: escaped text, tables, bars, sections, one inline stylesheet.

The page is one self-contained file: no script, and no stylesheet, font or image loaded from
anywhere else (images are data URIs), so it opens offline and can be mailed.
"""
from __future__ import annotations

import base64
import html
import math
from typing import Iterable, Optional


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(uri: str, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{esc(alt)}">'


def bar(fraction: float, color: str = "var(--blue)") -> str:
    """A horizontal bar 0..1 drawn with CSS (no image)."""
    f = 0.0 if not math.isfinite(fraction) else min(max(fraction, 0.0), 1.0)
    return f'<span class="bar"><span style="width:{f * 100:.1f}%;background:{color}"></span></span>'


def table(headers: Iterable[str], rows: Iterable[str], cls: str = "", id_: Optional[str] = None) -> str:
    """``rows`` are ready-made ``<tr>...</tr>`` strings; headers are escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    ident = f' id="{id_}"' if id_ else ""
    return f'<table class="{cls}"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def section(id_: str, title: str, body: str, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{id_}"><h2>{esc(title)}</h2>{lead}{body}</section>'


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


CSS = """
:root { --blue:#2a6fb0; --red:#c8453c; --grey:#8a8f98; --bg:#f5f6f8; --fg:#1d2229; --line:#dde1e6; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:#1d2229; color:#fff; padding:18px 28px 10px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .sub { color:#b9c0ca; font-size:13px; }
nav { position:sticky; top:0; z-index:2; background:#2b323b; padding:6px 28px; }
nav a { color:#dfe5ec; text-decoration:none; margin-right:16px; font-size:13px; }
main { max-width:1280px; margin:0 auto; padding:16px 20px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:6px; padding:14px 20px 18px; margin:16px 0; }
h2 { font-size:18px; margin:2px 0 10px; }
h3 { font-size:15px; margin:16px 0 6px; }
p.intro { color:#4a525c; margin:0 0 10px; }
.note { color:#6a717b; font-style:italic; }
table { border-collapse:collapse; font-variant-numeric:tabular-nums; }
th, td { padding:3px 8px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
thead th { background:#f0f2f5; font-weight:600; }
td.num { text-align:right; white-space:nowrap; }
tr.weak td, tr.weak th { background:#fdeceb; }
.bar { display:inline-block; width:90px; height:9px; background:#eceef1; margin-left:6px; vertical-align:middle; }
.bar > span { display:block; height:100%; }
.grid { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
.facts { display:grid; grid-template-columns:repeat(auto-fill, minmax(380px, 1fr)); gap:4px 24px; margin-bottom:12px; }
.facts div b { display:inline-block; min-width:90px; color:#4a525c; font-weight:600; }
img.plot { max-width:100%; height:auto; border:1px solid var(--line); }
.scroll { max-height:420px; overflow:auto; display:inline-block; border:1px solid var(--line); }
ul.findings { padding-left:0; list-style:none; margin:0; }
ul.findings li { padding:8px 12px; margin:6px 0; border-left:4px solid var(--grey); background:#f7f8fa; }
ul.findings li.warn { border-color:var(--red); background:#fdf1f0; }
ul.findings li.info { border-color:var(--blue); }
table.cm td { text-align:center; min-width:34px; font-size:12px; line-height:1.15; padding:3px 4px; }
table.cm td small { display:block; font-size:10px; opacity:0.85; }
table.cm td.zero { color:#c3c8cf; }
table.cm th.rot { writing-mode:vertical-rl; transform:rotate(180deg); white-space:nowrap; padding:6px 2px; }
table.cm th { font-size:12px; }
.cm-wrap { overflow:auto; max-width:100%; }
.gallery { display:flex; flex-wrap:wrap; gap:12px; }
figure.ex { margin:0; padding:6px; border:1px solid var(--line); border-radius:4px; background:#fafbfc;
  width:min-content; }
figure.ex .pair { display:flex; gap:4px; }
figure.ex img { display:block; image-rendering:pixelated; }
figure.ex figcaption { font-size:12px; margin-top:4px; white-space:nowrap; }
figure.ex figcaption .path { color:#8a8f98; display:block; overflow:hidden; text-overflow:ellipsis; max-width:230px; }
.missing { width:112px; height:112px; display:flex; align-items:center; justify-content:center; text-align:center;
  background:#eceef1; color:#8a8f98; font-size:11px; }
figure.ex.small { padding:3px; border:none; background:none; }
figure.ex.small figcaption { font-size:11px; color:#4a525c; text-align:center; }
.missing.small { width:72px; height:72px; }
.class-card { border:1px solid var(--line); border-radius:4px; padding:6px 8px; background:#fafbfc; }
.class-card > b { display:block; margin-bottom:4px; }
.class-card .pair { display:flex; gap:4px; }
details summary { cursor:pointer; color:var(--blue); margin:8px 0; }
footer { color:#8a8f98; font-size:12px; text-align:center; margin:24px 0; }
"""


def page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str, footer: str = "") -> str:
    links = "".join(f'<a href="#{id_}">{esc(label)}</a>' for id_, label in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"  # no favicon request, not even on file://
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><div class=\"sub\">{subtitle}</div></header>"
        f"<nav>{links}</nav><main>{body}</main><footer>{footer}</footer></body></html>\n"
    )
