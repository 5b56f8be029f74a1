"""Output formats: text, wide and JSON lines; colour only when asked, stderr highlighted."""

from __future__ import annotations

import io
from typing import Any

import orjson

from kubeobs.search.backend import Hit
from kubeobs.search.render import RED, RESET, Renderer

TS = 1_709_337_600_123_456_789  # 2024-03-02T00:00:00.123456789Z


def doc(
    stream: str = "stdout", message: str = "GET /cart 200", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    k8s: dict[str, Any] = {
        "namespace": "shop",
        "pod": {"name": "web-1", "uid": "u"},
        "container": {"name": "nginx"},
        "node": {"name": "node-a"},
    }
    if labels is not None:
        k8s["labels"] = labels
    return {
        "@timestamp": "2024-03-02T01:00:00.123456789+01:00",
        "message": message,
        "stream": stream,
        "log": {"file": {"path": "/var/log/containers/x.log"}, "offset": 7},
        "kubernetes": k8s,
    }


def render(fmt: str, d: dict[str, Any], colour: bool = False) -> str:
    out = io.StringIO()
    r = Renderer(out, fmt, colour=colour)  # type: ignore[arg-type]
    r.write(Hit("id-7", d, TS))
    return out.getvalue()


def test_text_is_utc_time_source_and_message() -> None:
    assert render("text", doc()) == "2024-03-02T00:00:00.123Z shop/web-1/nginx GET /cart 200\n"


def test_wide_adds_nanoseconds_node_stream_and_labels() -> None:
    line = render("wide", doc("stderr", labels={"tier": "frontend", "app": "web"}))
    assert line == (
        "2024-03-02T00:00:00.123456789Z node-a shop/web-1/nginx stderr app=web,tier=frontend GET /cart 200\n"
    )
    assert render("wide", doc()).split()[4] == "-"  # no labels


def test_json_is_the_document_with_its_id() -> None:
    d = doc(message='say "hi"\n\tthere')
    assert orjson.loads(render("json", d)) == {"_id": "id-7", **d}
    assert render("json", d).count("\n") == 1


def test_colour_highlights_stderr_and_escapes_control_characters() -> None:
    plain = render("text", doc("stderr", "boom \x1b]0;pwned\x07"))
    assert "\x1b" not in plain.replace("\x1b]0;pwned\x07", "")  # piped: the message as stored, no colour
    coloured = render("text", doc("stderr", "boom \x1b]0;pwned\x07"), colour=True)
    assert f"{RED}boom \\x1b]0;pwned\\x07{RESET}" in coloured
    assert RED not in render("text", doc("stdout"), colour=True)


def test_the_same_pod_gets_the_same_colour() -> None:
    a = render("text", doc(message="one"), colour=True)
    b = render("text", doc(message="two"), colour=True)
    assert a.split(" ")[1] == b.split(" ")[1]
    assert a.split(" ")[1].startswith("\x1b[")


def test_missing_metadata_is_a_dash() -> None:
    d = {"message": "x", "stream": "stdout"}
    assert render("text", d) == "2024-03-02T00:00:00.123Z -/-/- x\n"
