"""HTML of the console: one layout, tables with captions, SDK snippets, and time charts drawn as inline SVG.

Every value is escaped here; nothing is inline script or inline style (the page's CSP allows neither): SVG
colours are presentation attributes, the layout is the stylesheet at /console/console.css.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

from aiohttp import web

from wardgate.cluster.api.console_data import Series, ServiceView

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
TOP = 5
"""Keys charted one by one; the rest are summed as `other`."""


def respond(status: int, html: str) -> web.Response:
    response = web.Response(status=status, text=html, content_type="text/html")
    response.headers.update(
        {
            "Cache-Control": "no-store",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            # Not no-referrer: with it, Chromium sends `Origin: null` on the console's own form posts.
            "Referrer-Policy": "same-origin",
        }
    )
    return response


def layout(title: str, body: str, *, user: str | None = None, admin: bool = False, current: str = "") -> str:
    links = [("/console", "My access")] + ([("/console/admin", "Admin")] if admin else [])
    mark = ' aria-current="page"'
    nav = "".join(
        f'<li><a href="{href}"{mark if href == current else ""}>{escape(text)}</a></li>' for href, text in links
    )
    who = ""
    if user:
        who = f'<p class="who">Signed in as <strong>{escape(user)}</strong> · <a href="/logout">Sign out</a></p>'
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)} · Wardgate</title><link rel="stylesheet" href="/console/console.css"></head>'
        '<body><a class="skip" href="#main">Skip to content</a>'
        f'<header><p class="brand">Wardgate console</p><nav aria-label="Console"><ul>{nav}</ul></nav>{who}</header>'
        f'<main id="main" tabindex="-1"><h1>{escape(title)}</h1>{body}</main></body></html>\n'
    )


def message(title: str, text: str, links: Sequence[tuple[str, str]] = ()) -> str:
    items = "".join(f'<li><a href="{escape(h)}">{escape(t)}</a></li>' for h, t in links)
    return layout(title, f"<p>{escape(text)}</p>" + (f"<ul>{items}</ul>" if items else ""))


def table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False) -> str:
    """A captioned table in a keyboard-scrollable region; cells are escaped unless `raw` (pre-escaped HTML)."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if raw else escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}">None.</td></tr>'
    return (
        f'<div class="scroll" role="region" aria-label="{escape(caption)}" tabindex="0">'
        f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'


def revoke_form(session: str, csrf: str, back: str, label: str) -> str:
    return (
        f'<form method="post" action="/console/sessions/{escape(session)}/revoke">{csrf_field(csrf)}'
        f'<input type="hidden" name="back" value="{escape(back)}">'
        f'<button type="submit" aria-label="{escape(label)}">Revoke</button></form>'
    )


def when(value: datetime | float | None) -> str:
    if value is None:
        return "-"
    at = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m" if hours else f"{rest // 60}m {rest % 60}s"


def number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4f}"


def snippets(base: str, service: ServiceView, client_id: str | None) -> str:
    """How to call the Service: the OAuth2 client-credentials step, then the OpenAI SDK (Python, TypeScript)."""
    url = service.public_url or service.tunnel_url
    cid = client_id or "<your OAuth2 client id>"
    python = (
        "import os\n\nimport httpx\nfrom openai import OpenAI\n\n"
        f'token = httpx.post("{base}/oauth2/token", data={{\n'
        f'    "grant_type": "client_credentials", "client_id": "{cid}",\n'
        '    "client_secret": os.environ["WARDGATE_CLIENT_SECRET"],\n'
        '}).json()["access_token"]\n'
        f'client = OpenAI(base_url="{url}/v1", api_key=token)\n'
        "print(client.models.list())\n"
    )
    typescript = (
        'import OpenAI from "openai";\n\n'
        f'const res = await fetch("{base}/oauth2/token", {{\n'
        '  method: "POST",\n'
        "  body: new URLSearchParams({\n"
        f'    grant_type: "client_credentials", client_id: "{cid}",\n'
        "    client_secret: process.env.WARDGATE_CLIENT_SECRET!,\n"
        "  }),\n});\n"
        "const { access_token } = await res.json();\n"
        f'const client = new OpenAI({{ baseURL: "{url}/v1", apiKey: access_token }});\n'
        "console.log(await client.models.list());\n"
    )
    note = (
        ""
        if client_id
        else "<p>You have no OAuth2 client yet: ask your administrator for one (its id and secret).</p>"
    )
    tunnel = (
        ""
        if service.public_url
        else "<p>This Service is reached through the <code>wardgate</code> client: run "
        "<code>wardgate connect</code> first.</p>"
    )
    label = escape(service.name)
    return (
        f"{tunnel}{note}<p>Put the client secret in <code>WARDGATE_CLIENT_SECRET</code>, then:</p>"
        f'<h4 id="py-{label}">Python (openai)</h4>'
        f'<pre tabindex="0" aria-labelledby="py-{label}"><code>{escape(python)}</code></pre>'
        f'<h4 id="ts-{label}">TypeScript (openai)</h4>'
        f'<pre tabindex="0" aria-labelledby="ts-{label}"><code>{escape(typescript)}</code></pre>'
    )


def chart(title: str, data: Series) -> str:
    """Tokens per bucket, one line per key (the TOP largest by cost, then tokens; the rest as `other`),
    with a legend; the table beside it carries the same numbers for screen readers."""
    keys = [t["key"] for t in data.totals[:TOP]]
    lines: dict[str, dict[float, int]] = {k: data.points.get(k, {}) for k in keys}
    rest = [t["key"] for t in data.totals[TOP:]]
    if rest:
        other: dict[float, int] = {}
        for key in rest:
            for at, value in data.points.get(key, {}).items():
                other[at] = other.get(at, 0) + value
        lines["other"] = other
    width, height, left, bottom, top = 640, 220, 56, 28, 12
    peak = max([v for line in lines.values() for v in line.values()] + [1])
    span = max(len(data.buckets) - 1, 1)

    def xy(i: int, value: float) -> str:
        x = left + (width - left - 8) * i / span
        y = top + (height - top - bottom) * (1 - value / peak)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 8}" y2="{height - bottom}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="12" fill="#333">{number(peak)}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end" font-size="12" fill="#333">0</text>',
    ]
    if data.buckets:
        first, last = when(data.buckets[0]), when(data.buckets[-1])
        parts.append(f'<text x="{left}" y="{height - 8}" font-size="12" fill="#333">{escape(first)}</text>')
        parts.append(
            f'<text x="{width - 8}" y="{height - 8}" text-anchor="end" font-size="12" fill="#333">{escape(last)}</text>'
        )
    legend = []
    for n, (key, line) in enumerate(lines.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(xy(i, line.get(at, 0)) for i, at in enumerate(data.buckets))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"><title>{escape(key)}</title>'
            "</polyline>"
        )
        legend.append(
            f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" fill="{colour}"/></svg>'
            f" {escape(key)}</li>"
        )
    summary = f"{title}: tokens per interval for {', '.join(lines) or 'nobody'}; peak {number(peak)}"
    return (
        f'<figure><svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(summary)}">'
        f"{''.join(parts)}</svg>"
        f'<figcaption>{escape(title)} (tokens)<ul class="legend">{"".join(legend)}</ul></figcaption></figure>'
    )


def totals_table(caption: str, data: Series, currency: str) -> str:
    rows = [
        [t["key"], number(t["requests"]), number(t["input"]), number(t["output"]), f"{t['cost']:.6f} {currency}"]
        for t in data.totals
    ]
    return table(caption, ["", "Requests", "Input tokens", "Output tokens", "Cost"], rows)


def range_form(action: str, selected: str, ranges: Iterable[str]) -> str:
    options = "".join(
        f'<option value="{r}"{" selected" if r == selected else ""}>last {r}</option>' for r in ranges
    )
    return (
        f'<form method="get" action="{action}" class="range"><label for="range">Period</label>'
        f'<select id="range" name="range">{options}</select> <button type="submit">Show</button></form>'
    )
