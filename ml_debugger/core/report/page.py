"""The HTML page around the sections: inlined CSS and plotly.js, a table of contents, and a
status line that says when a chart failed to draw (so a broken report never looks complete)."""

from __future__ import annotations

from datetime import datetime

from ml_debugger import __version__
from ml_debugger.core.report.sections import Section, esc

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); }
header { padding:20px 32px 12px; border-bottom:1px solid var(--line); background:var(--bg); }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:0; color:var(--muted); }
nav { position:sticky; top:0; z-index:10; background:#fff; border-bottom:1px solid var(--line); padding:8px 32px; }
nav a { margin-right:16px; color:var(--accent); text-decoration:none; white-space:nowrap; }
main { padding:8px 32px 40px; max-width:1280px; }
section { margin-top:28px; }
h2 { font-size:18px; border-bottom:1px solid var(--line); padding-bottom:4px; }
h3 { font-size:15px; margin:18px 0 6px; }
table { border-collapse:collapse; margin:6px 0 12px; }
th, td { border:1px solid var(--line); padding:4px 10px; text-align:left; }
th { background:var(--bg); font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
table.kv thead { display:none; }
table.kv td:first-child { color:var(--muted); }
.row { display:flex; flex-wrap:wrap; gap:8px 32px; align-items:flex-start; }
.row > div { width:min-content; }
.row td, .row th { white-space:nowrap; }
.row h3 { margin-top:0; }
.headline { font-weight:600; }
.note { color:var(--muted); margin:6px 0; }
.heatmap { margin-bottom:16px; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill,minmax(170px,1fr)); gap:10px; }
.card { margin:0; border:1px solid var(--line); border-radius:6px; padding:8px; font-size:12px; }
.card img, .card .missing { display:block; width:96px; height:96px; object-fit:contain; margin:0 auto 6px;
  image-rendering:pixelated; background:var(--bg); }
.card .missing { display:flex; align-items:center; justify-content:center; color:var(--muted); text-align:center; }
.card figcaption span, .card figcaption code, .card figcaption b { display:block; overflow-wrap:anywhere; }
#report-status { padding:8px 32px; background:#ffebe9; color:#82071e; }
footer { padding:12px 32px; color:var(--muted); border-top:1px solid var(--line); }
"""

# Runs before anything else: remembers script errors so the status line can report them.
_ERRORS = (
    "<script>window.mldbgErrors=[];window.addEventListener('error',function(e){"
    "window.mldbgErrors.push(String(e.message||e));});</script>"
)
# Runs last: counts the charts that drew, and shows the status line when something failed.
_STATUS = """<script>(function(){
var n=document.querySelectorAll('.js-plotly-plot').length;document.body.setAttribute('data-charts',String(n));
if(window.mldbgErrors.length){var s=document.getElementById('report-status');
s.textContent='Some charts failed to draw: '+window.mldbgErrors.join('; ');s.hidden=false;}
document.body.setAttribute('data-report-status',window.mldbgErrors.length?'error':'ok');})();</script>"""


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole self-contained page."""
    from plotly.offline import get_plotlyjs

    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    made = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>{_ERRORS}<style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f'<div id="report-status" hidden></div><nav>{nav}</nav><main>{body}</main>'
        f"<footer>made by mldbg {esc(__version__)} on {made}; charts by plotly.js, "
        f"inlined so this file opens offline</footer>{_STATUS}</body></html>"
    )
