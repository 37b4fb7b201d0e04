"""The console's pieces without a server: sessions and CSRF, number tags, SVG charts."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from features.service.console.charts import Series, ShareBar, bars, compact, share_bars
from features.service.console.render import duration, exact, human, key_part, number
from features.service.console.session import ConsoleAuth, csrf_ok, safe_next

ADMIN = "admin-token-0123456789abcdef"
OTHER_ADMIN = "other-admin-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
TOKENS = {ADMIN: frozenset({"admin"}), READER: frozenset({"features:read"})}


def test_only_admin_tokens_open_sessions() -> None:
    auth = ConsoleAuth(TOKENS)
    assert auth.admin_key(ADMIN) == ADMIN.encode()
    assert auth.admin_key(READER) is None
    assert auth.admin_key(ADMIN + "x") is None
    assert auth.admin_key("\udcff") is None  # not encodable: no crash


def test_a_session_cookie_proves_a_token_without_holding_it() -> None:
    auth = ConsoleAuth(TOKENS, ttl_s=3600)
    cookie, session = auth.open(ADMIN.encode(), now=1_000_000)
    assert ADMIN not in cookie
    assert auth.session(cookie, now=1_000_000 + 10) == session
    assert auth.session(cookie, now=1_000_000 + 3600) is None  # expired
    expires, nonce, mac = cookie.split(".")
    assert auth.session(f"{int(expires) + 9999}.{nonce}.{mac}", now=1_000_000) is None
    assert auth.session(f"{expires}.{nonce}x.{mac}", now=1_000_000) is None
    assert auth.session("", now=1_000_000) is None
    assert auth.session("garbage", now=1_000_000) is None
    # Taking the token out of the configuration ends its sessions; other tokens' stay apart.
    assert ConsoleAuth({OTHER_ADMIN: frozenset({"admin"})}).session(cookie, now=1_000_010) is None
    again = ConsoleAuth({**TOKENS, OTHER_ADMIN: frozenset({"admin"})})
    assert again.session(cookie, now=1_000_010) == session


def test_csrf_tokens_belong_to_one_session() -> None:
    auth = ConsoleAuth(TOKENS)
    _, first = auth.open(ADMIN.encode())
    _, second = auth.open(ADMIN.encode())
    assert first.csrf != second.csrf
    assert csrf_ok(first.csrf, first.csrf)
    assert not csrf_ok(first.csrf, second.csrf)
    assert not csrf_ok(first.csrf, None) and not csrf_ok(first.csrf, "")


def test_after_login_only_console_paths_of_this_site() -> None:
    assert safe_next("/console/person?user_id=u1") == "/console/person?user_id=u1"
    for bad in ("https://evil.example/", "//evil.example/console/", "/console//evil", "/other",
                "/console/\\evil", None, "/console/\nx"):  # fmt: skip
        assert safe_next(bad) == "/console/"


def test_numbers_are_tagged_with_their_exact_value() -> None:
    html = str(number(1234567, "a.b"))
    assert html == '<span class="n int" data-k="a.b" data-v="1234567">1,234,567</span>'
    t = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    assert 'data-v="2026-12-01T08:30:00+00:00">2026-12-01 08:30:00 UTC<' in str(
        number(t, "t", "time")
    )
    assert str(number(None, "x")).endswith('data-v="">—</span>')
    assert human(0.1234, "share") == "12.3 %" and human(2.5, "rate") == "2.50"
    assert exact(0.1) == "0.1" and exact(True) == "1"
    assert [duration(s) for s in (45, 600, 7200, 3 * 86400)] == ["45 s", "10 min", "2.0 h", "3.0 d"]
    assert key_part("a.b c") == "a_b_c" and key_part("") == "_"
    assert "<script>" not in str(number(1, "<script>"))  # keys are escaped too


def _bars(stacked: bool) -> str:
    return str(
        bars(
            ["00:00", "01:00", "02:00"],
            ["h0", "h1", "h2"],
            [Series("rows", "rows", [4, 0, 6], "s0"), Series("msgs", "messages", [3, 2, 0], "s1")],
            key_prefix="p",
            title="t <&>",
            stacked=stacked,
        )
    )


def test_bars_draw_each_nonzero_value_once_and_scale_to_the_peak() -> None:
    svg = _bars(stacked=True)
    drawn = dict(re.findall(r'data-k="([^"]+)" data-v="([^"]+)"', svg))
    assert drawn == {"p.h0.rows": "4", "p.h2.rows": "6", "p.h0.messages": "3", "p.h1.messages": "2"}
    assert "t &lt;&amp;&gt;" in svg  # titles are escaped
    top = '<text class="axis" x="40" y="11.0" text-anchor="end">{}</text>'
    assert top.format(7) in svg  # stacked: the tallest stack (4 + 3) reaches the top
    assert top.format(6) in _bars(stacked=False)  # side by side: the tallest bar
    assert compact(950) == "950" and compact(1200) == "1.2k" and compact(3_400_000) == "3.4M"


def test_share_bars_clip_to_the_track() -> None:
    svg = str(
        share_bars([ShareBar("a", "a", 1.5), ShareBar("b", "b", None)], key_prefix="s", title="x")
    )
    assert 'data-k="s.a" data-v="1.5"' in svg and 'data-k="s.b" data-v=""' in svg
    widths = re.findall(r'<rect class="s0" x="200" y="[\d.]+" width="([\d.]+)"', svg)
    assert [float(w) for w in widths] == [730.0, 0.0]
