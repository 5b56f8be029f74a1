"""MultilineJoiner: the trace corpus, streams, CRI partials, timeout, cap, pass-through, checkpoints."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.lines import LineAssembler
from collector.multiline import (
    BUILTIN,
    END,
    START,
    MultilineJoiner,
    Rule,
    RuleSet,
    rule_set,
)
from collector.record import FileInfo, Record

CORPUS = Path(__file__).parent / "multiline_corpus"
LANGS = ["java", "python", "go", "ruby", "node"]
TS = "2024-05-01T12:00:00.000000000Z"


def info(key: str = "1:2:ab") -> FileInfo:
    return FileInfo(key=key, path="/var/log/containers/p_ns_c-0123.log", id_prefix="pfx")


FILE = info()


def ts(i: int) -> str:
    return f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{i:09d}Z"


@dataclass
class Corpus:
    lines: list[str]
    offsets: list[int]  # byte offset of each line in the .txt file
    expected: list[dict[str, Any]]  # {"offset", "lines", "message"} per event, in order


def load(lang: str) -> Corpus:
    data = (CORPUS / f"{lang}.txt").read_bytes()
    raw = data.split(b"\n")
    assert raw.pop() == b""
    offsets, pos = [], 0
    for line in raw:
        offsets.append(pos)
        pos += len(line) + 1
    expected = json.loads((CORPUS / f"{lang}.expected.json").read_text())
    return Corpus([r.decode() for r in raw], offsets, expected)


def records(c: Corpus, fi: FileInfo | None = None, stream: str = "stdout") -> list[Record]:
    fi = fi or info()
    return [
        Record(
            file=fi,
            offset=off,
            ckpt=off + len(line.encode()) + 1,
            timestamp=ts(i),
            stream=stream,
            message=line,
            size=len(line.encode()) + 1,
        )
        for i, (line, off) in enumerate(zip(c.lines, c.offsets, strict=True))
    ]


def rec(offset: int, message: str, stream: str = "stdout", fi: FileInfo | None = None, **kw: Any) -> Record:
    size = len(message.encode()) + 1
    return Record(
        file=fi or FILE,
        offset=offset,
        ckpt=offset + size,
        timestamp=TS,
        stream=stream,
        message=message,
        size=size,
        **kw,
    )


def run(joiner: MultilineJoiner, recs: list[Record], now: float = 0.0) -> list[Record]:
    out: list[Record] = []
    for r in recs:
        out.extend(joiner.push(r, now))
    out.extend(joiner.flush())
    return out


def cri(msg: str, stream: str = "stdout", tag: str = "F") -> bytes:
    return f"{TS} {stream} {tag} {msg}\n".encode()


# -- the corpus -----------------------------------------------------------------------------------


def test_corpus_is_varied() -> None:
    for lang in LANGS:
        c = load(lang)
        multi = [e for e in c.expected if e["lines"] > 1]
        assert len(multi) >= 3, lang
        assert sum(e["lines"] for e in c.expected) == len(c.lines)
        # ordinary lines around the traces: JSON logs and plain text in every corpus
        singles = [e["message"] for e in c.expected if e["lines"] == 1]
        assert any(m.startswith("{") for m in singles), lang
        assert any(not m.startswith("{") for m in singles), lang


@pytest.mark.parametrize("rules", ["own", "auto"])
@pytest.mark.parametrize("lang", LANGS)
def test_corpus_becomes_the_expected_events(lang: str, rules: str) -> None:
    c = load(lang)
    recs = records(c)
    joiner = MultilineJoiner(rule_set(lang if rules == "own" else "auto"))
    out = run(joiner, recs)
    assert [r.message for r in out] == [e["message"] for e in c.expected]
    assert [r.offset for r in out] == [e["offset"] for e in c.expected]
    assert joiner.pending_offset() is None
    # each event: first line's timestamp and offset (so its _id), last line's checkpoint, summed size
    by_offset = {r.offset: i for i, r in enumerate(recs)}
    for ev, exp in zip(out, c.expected, strict=True):
        first = by_offset[ev.offset]
        last = first + exp["lines"] - 1
        assert ev.timestamp == recs[first].timestamp
        assert ev.ckpt == recs[last].ckpt
        assert ev.size == sum(r.size for r in recs[first : last + 1])
        assert (ev.stream, ev.file, ev.part, ev.error) == ("stdout", FILE, 0, None)
        if exp["lines"] == 1:
            assert ev is recs[first]  # a line that is not part of an event is passed on untouched
    assert joiner.stats.events == sum(e["lines"] > 1 for e in c.expected)
    assert joiner.stats.joined_lines == sum(e["lines"] for e in c.expected if e["lines"] > 1)


@pytest.mark.parametrize("lang", LANGS)
def test_other_languages_rules_join_nothing_in_a_corpus(lang: str) -> None:
    recs = records(load(lang))
    for other in LANGS:
        if other != lang:
            out = run(MultilineJoiner(rule_set(other)), recs)
            assert out == recs, other


def test_events_are_emitted_as_soon_as_they_are_known_to_be_complete() -> None:
    """An event is held only until the line after it (or its closing line) arrives."""
    c = load("node")
    recs = records(c)
    joiner = MultilineJoiner(rule_set("node"))
    emitted_at: dict[int, int] = {}
    for i, r in enumerate(recs):
        for ev in joiner.push(r, 0.0):
            emitted_at[ev.offset] = i
    index = {r.offset: i for i, r in enumerate(recs)}
    for exp in c.expected:
        end = index[exp["offset"]] + exp["lines"] - 1
        at = emitted_at.get(exp["offset"])
        if exp["message"].endswith("Node.js v18.19.0"):
            assert at == end  # the footer closes the event: no waiting for the next line
        elif at is not None:
            assert at in (end, end + 1)  # else at once, or when the next line tells
    assert joiner.flush()[0].offset == c.expected[-1]["offset"]


# -- streams and partial lines ----------------------------------------------------------------------


def test_interleaved_stdout_and_stderr_keep_their_events_apart() -> None:
    """A Java trace on stderr interleaved with a Python program's stdout, read from a CRI file."""
    java, python = load("java"), load("python")
    rnd = random.Random(7)
    queues = {"stderr": list(enumerate(java.lines)), "stdout": list(enumerate(python.lines))}
    data = b""
    first_offset: dict[tuple[str, int], int] = {}  # (stream, line index) -> offset in the CRI file
    while queues["stderr"] or queues["stdout"]:
        stream = rnd.choice([s for s, q in queues.items() if q])
        i, line = queues[stream].pop(0)
        first_offset[stream, i] = len(data)
        data += cri(line, stream)

    asm = LineAssembler(FILE, 0, 1 << 20)
    joiners = {"stdout": MultilineJoiner(rule_set("auto")), "stderr": MultilineJoiner(rule_set("auto"))}
    out: dict[str, list[Record]] = {"stdout": [], "stderr": []}
    for pos in range(0, len(data), 4096):
        for r in asm.feed(data[pos : pos + 4096]):
            out[r.stream].extend(joiners[r.stream].push(r, 0.0))
    for stream, j in joiners.items():
        out[stream].extend(j.flush())

    for stream, c in (("stderr", java), ("stdout", python)):
        line_index = dict(zip(c.offsets, range(len(c.lines)), strict=True))
        assert [r.message for r in out[stream]] == [e["message"] for e in c.expected]
        assert [r.offset for r in out[stream]] == [
            first_offset[stream, line_index[e["offset"]]] for e in c.expected
        ]
        assert all(r.stream == stream for r in out[stream])


def cri_with_partials(lines: list[str], piece: int) -> tuple[bytes, list[int]]:
    """Every line longer than ``piece`` bytes is written as CRI partials (P...P F)."""
    data = b""
    offsets = []
    for line in lines:
        offsets.append(len(data))
        b = line.encode()
        chunks = [b[i : i + piece] for i in range(0, len(b), piece)] or [b""]
        for k, chunk in enumerate(chunks):
            tag = "F" if k == len(chunks) - 1 else "P"
            data += f"{TS} stdout {tag} ".encode() + chunk + b"\n"
    return data, offsets


@pytest.mark.parametrize("lang", ["java", "go"])
def test_trace_written_as_cri_partials_is_joined_the_same(lang: str) -> None:
    c = load(lang)
    data, cri_offsets = cri_with_partials(c.lines, piece=23)
    asm = LineAssembler(FILE, 0, 1 << 20)
    recs: list[Record] = []
    for pos in range(0, len(data), 61):
        recs.extend(asm.feed(data[pos : pos + 61]))
    assert [r.message for r in recs] == c.lines  # lines.py reassembled them
    out = run(MultilineJoiner(rule_set(lang)), recs)
    index = dict(zip(c.offsets, range(len(c.lines)), strict=True))
    assert [r.message for r in out] == [e["message"] for e in c.expected]
    assert [r.offset for r in out] == [cri_offsets[index[e["offset"]]] for e in c.expected]
    assert sum(r.size for r in out) == len(data)


def test_reassembled_partials_fed_as_records() -> None:
    """What lines.py hands over for a line written in pieces: one record, offset of the first piece,
    size of all pieces on disk."""
    lines = [
        "java.lang.IllegalStateException: " + "x" * 40_000,
        "\tat com.acme.Big.run(Big.java:1)",
        "\tat com.acme.Main.main(Main.java:5)",
        "done",
    ]
    piece_sizes = [[16_384 + 40, 16_384 + 40, 7_266 + 40], [75], [78], [45]]
    recs, pos = [], 1000
    for line, sizes in zip(lines, piece_sizes, strict=True):
        recs.append(Record(FILE, pos, pos + sum(sizes), TS, "stdout", line, sum(sizes)))
        pos += sum(sizes)
    out = run(MultilineJoiner(rule_set("java")), recs)
    assert [r.message for r in out] == ["\n".join(lines[:3]), "done"]
    assert (out[0].offset, out[0].size, out[0].ckpt) == (1000, sum(map(sum, piece_sizes[:3])), recs[2].ckpt)


# -- timeout ---------------------------------------------------------------------------------------


def test_timeout_flushes_the_last_event_of_a_quiet_container() -> None:
    j = MultilineJoiner(rule_set("python"))
    lines = ["Traceback (most recent call last):", '  File "/app/x.py", line 1, in <module>', "ValueError: x"]
    for k, line in enumerate(lines):
        assert j.push(rec(k * 100, line), 10.0 + k * 0.25) == []
    assert j.deadline() == 12.5
    assert j.flush_expired(12.49) == []
    assert j.pending_offset() == 0
    (ev,) = j.flush_expired(12.5)
    assert ev.message == "\n".join(lines)
    assert j.pending_offset() is None and j.deadline() is None
    assert j.flush_expired(100.0) == []
    assert j.stats.timed_out == 1
    # a line that comes after the flush is not glued to the event already shipped
    assert j.push(rec(300, '  File "/app/y.py", line 2'), 20.0) == [rec(300, '  File "/app/y.py", line 2')]


def test_timeout_counts_from_the_last_line_of_the_event() -> None:
    j = MultilineJoiner(rule_set("java"), timeout=2.0)
    j.push(rec(0, "java.lang.RuntimeException: x"), 0.0)
    j.push(rec(40, "\tat a.B.c(B.java:1)"), 1.5)
    assert j.flush_expired(3.0) == []
    j.push(rec(80, "\tat a.B.d(B.java:2)"), 3.0)
    assert j.flush_expired(4.9) == []
    (ev,) = j.flush_expired(5.0)
    assert ev.message.count("\n") == 2


def test_timeout_emits_set_aside_blank_line_after_the_event() -> None:
    j = MultilineJoiner(rule_set("python"))
    for k, line in enumerate(["Traceback (most recent call last):", "  x", "KeyError: 'a'", ""]):
        j.push(rec(k * 50, line), 0.0)
    out = j.flush_expired(2.0)
    assert [r.message for r in out] == ["Traceback (most recent call last):\n  x\nKeyError: 'a'", ""]
    assert [r.offset for r in out] == [0, 150]


# -- cap -------------------------------------------------------------------------------------------


def java_trace(frames: int) -> list[str]:
    return ["java.lang.IllegalStateException: boom"] + [
        f"\tat com.acme.deep.Frame{i}.call(Frame{i}.java:{i})" for i in range(frames)
    ]


def test_cap_cuts_a_long_event_and_drops_nothing() -> None:
    lines = [*java_trace(40), "after"]
    recs = [rec(i * 100, line) for i, line in enumerate(lines)]
    j = MultilineJoiner(rule_set("java"), max_bytes=300)
    out = run(j, recs)
    assert out[-1].message == "after"
    events = out[:-1]
    assert len(events) > 5
    assert all(len(e.message.encode()) <= 300 for e in events)
    assert "\n".join(e.message for e in events) == "\n".join(lines[:-1])
    assert [e.offset for e in events] == [recs[i].offset for i in starts(events, recs)]
    assert j.stats.capped == len(events) - 1


def starts(events: list[Record], recs: list[Record]) -> list[int]:
    index, k = [], 0
    for e in events:
        index.append(k)
        k += e.message.count("\n") + 1
    assert k == len(recs) - 1
    return index


def test_cap_counts_utf8_bytes() -> None:
    j = MultilineJoiner(rule_set("java"), max_bytes=100)
    head = rec(0, "java.lang.RuntimeException: " + "é" * 20)  # 28 + 40 bytes
    frame = rec(100, "\tat a.B.c(B.java:1) " + "é" * 5)  # 20 + 10 bytes: 68 + 1 + 30 = 99 fits
    frame2 = rec(200, "\tat a.B.d(B.java:1)")  # 99 + 1 + 19 would not
    assert j.push(head, 0) == [] and j.push(frame, 0) == []
    (ev,) = j.push(frame2, 0)
    assert ev.message == head.message + "\n" + frame.message
    assert j.pending_offset() == 200


def test_cap_keeps_the_event_going_in_its_state() -> None:
    """After a cut, the rest of a chained Python traceback still ends where the traceback ends."""
    lines = ["Traceback (most recent call last):"]
    lines += [f'  File "/app/m{i}.py", line {i}, in f{i}' for i in range(20)]
    lines += ["ValueError: a", "", "During handling of the above exception, another exception occurred:", ""]
    lines += ["Traceback (most recent call last):", '  File "/app/z.py", line 1, in z', "KeyError: 'b'"]
    recs = [rec(i * 100, line) for i, line in enumerate([*lines, "INFO done"])]
    out = run(MultilineJoiner(rule_set("python"), max_bytes=400), recs)
    assert out[-1].message == "INFO done"
    assert "\n".join(r.message for r in out[:-1]) == "\n".join(lines)
    assert len(out) > 3


def test_a_single_line_larger_than_the_cap_is_shipped_whole() -> None:
    j = MultilineJoiner(rule_set("java"), max_bytes=50)
    big = rec(0, "java.lang.RuntimeException: " + "x" * 100)
    frame = rec(200, "\tat a.B.c(B.java:1)")
    out = run(j, [big, frame, rec(300, "next")])
    assert out == [big, frame, rec(300, "next")]


# -- pass-through ----------------------------------------------------------------------------------


def test_parse_errors_and_split_parts_are_never_joined() -> None:
    j = MultilineJoiner(rule_set("auto"))
    err = rec(0, "Traceback (most recent call last):", error="not a CRI or docker line")
    part = rec(100, "Traceback (most recent call last):", part=1, last_part=False)
    assert j.push(err, 0) == [err]
    assert j.push(part, 0) == [part]
    assert j.pending_offset() is None

    held = [rec(200, "java.lang.RuntimeException: x"), rec(240, "\tat a.B.c(B.java:1)")]
    for r in held:
        assert j.push(r, 0) == []
    frame_as_part = rec(300, "\tat a.B.d(B.java:2)", part=2)
    out = j.push(frame_as_part, 0)
    assert [r.message for r in out] == [held[0].message + "\n" + held[1].message, frame_as_part.message]
    assert out[1] is frame_as_part

    for r in held:
        j.push(r, 0)
    bad = rec(400, "\tat a.B.e(B.java:3)", error="bad timestamp")
    out = j.push(bad, 0)
    assert out[1] is bad and out[0].offset == 200
    assert j.pending_offset() is None


def test_no_rules_passes_everything_through() -> None:
    j = MultilineJoiner(None)
    recs = records(load("java"))
    assert [x for r in recs for x in j.push(r, 0.0)] == recs
    assert j.pending_offset() is None and j.flush() == [] and j.flush_expired(1e9) == []


def test_a_record_of_another_stream_or_file_ends_the_held_event() -> None:
    """One joiner per (file, stream); if a caller mixes them anyway, nothing is glued across."""
    j = MultilineJoiner(rule_set("java"))
    j.push(rec(0, "java.lang.RuntimeException: x"), 0)
    other = rec(50, "\tat a.B.c(B.java:1)", stream="stderr")
    assert [r.offset for r in j.push(other, 0)] == [0, 50]
    j.push(rec(100, "java.lang.RuntimeException: y"), 0)
    elsewhere = rec(150, "\tat a.B.c(B.java:1)", fi=info("9:9:zz"))
    assert [r.offset for r in j.push(elsewhere, 0)] == [100, 150]


# -- checkpoints -----------------------------------------------------------------------------------


def test_pending_offset_follows_the_held_event() -> None:
    j = MultilineJoiner(rule_set("java"))
    assert j.pending_offset() is None
    assert j.push(rec(0, "plain line"), 0) == [rec(0, "plain line")]
    assert j.pending_offset() is None
    j.push(rec(11, "java.lang.IllegalStateException: a"), 0)
    assert j.pending_offset() == 11
    j.push(rec(50, "\tat a.B.c(B.java:1)"), 0)
    assert j.pending_offset() == 11
    # a new trace right after: the first is emitted, the second is now held
    (first,) = j.push(rec(80, "java.lang.RuntimeException: b"), 0)
    assert (first.offset, first.ckpt) == (11, rec(50, "\tat a.B.c(B.java:1)").ckpt)
    assert j.pending_offset() == 80
    out = j.push(rec(120, "an ordinary line"), 0)
    assert [r.offset for r in out] == [80, 120]
    assert j.pending_offset() is None


def test_emitted_checkpoints_never_pass_the_held_event() -> None:
    """Within one joiner, every record emitted while an event is held checkpoints at or before it."""
    for lang in LANGS:
        recs = records(load(lang))
        j = MultilineJoiner(rule_set("auto"))
        for r in recs:
            for out in j.push(r, 0.0):
                held = j.pending_offset()
                assert held is None or out.ckpt <= held


# -- rules -----------------------------------------------------------------------------------------


def test_custom_start_and_continuation_patterns() -> None:
    rules = RuleSet.custom(start=r"\d{4}-\d\d-\d\d ", cont=r"(?!\d{4}-\d\d-\d\d )")
    lines = [
        "2024-05-01 12:00:00,001 INFO  boot complete",
        "2024-05-01 12:00:01,002 ERROR request failed:",
        "  status=500",
        "  body=<html>oops</html>",
        "2024-05-01 12:00:02,003 INFO  next request",
    ]
    out = run(MultilineJoiner(rules), [rec(i * 100, line) for i, line in enumerate(lines)])
    assert [r.message for r in out] == [lines[0], "\n".join(lines[1:4]), lines[4]]
    assert [r.offset for r in out] == [0, 100, 400]


def test_custom_rules_as_a_state_machine_with_flags() -> None:
    rules = RuleSet(
        "sql",
        [
            Rule(START, r"(?i)begin transaction", "body"),
            Rule("body", r"(?i)commit|rollback", END),
            Rule("body", r"\s+\S", "body"),
        ],
    )
    lines = ["BEGIN TRANSACTION", "  insert 1", "  insert 2", "COMMIT", "other"]
    j = MultilineJoiner(rules)
    outs = [j.push(rec(i * 20, line), 0) for i, line in enumerate(lines)]
    assert outs[3][0].message == "\n".join(lines[:4])  # END: emitted with its closing line
    assert outs[4] == [rec(80, "other")]


def test_auto_first_matching_start_owns_the_event() -> None:
    a = RuleSet.custom(r"E", r"a", name="a")
    b = RuleSet.custom(r"Er", r"b", name="b")
    both = RuleSet.combine("ab", [a, b])
    out = run(MultilineJoiner(both), [rec(0, "Error"), rec(10, "a1"), rec(20, "b1")])
    assert [r.message for r in out] == ["Error\na1", "b1"]
    out = run(MultilineJoiner(RuleSet.combine("ba", [b, a])), [rec(0, "Error"), rec(10, "a1"), rec(20, "b1")])
    assert [r.message for r in out] == ["Error", "a1", "b1"]


def test_bad_rules_are_reported() -> None:
    with pytest.raises(ValueError, match=r"state 'cont'.*\(unclosed"):
        RuleSet.custom(start="x", cont="(unclosed")
    with pytest.raises(ValueError, match="no 'start' rule"):
        RuleSet("r", [Rule("a", "x", "a")])
    with pytest.raises(ValueError, match="'missing' has no rules"):
        RuleSet("r", [Rule(START, "x", "missing")])
    with pytest.raises(ValueError, match="unknown multiline rules 'cobol'; known: java, python"):
        rule_set("cobol")
    with pytest.raises(ValueError):
        MultilineJoiner(None, max_bytes=0)
    assert set(BUILTIN) == {"java", "python", "go", "ruby", "node", "auto"}


# -- invariants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_nothing_is_lost_reordered_or_invented(seed: int) -> None:
    """Whatever the cap, the timeout and the mix of languages: every line comes out once, in order."""
    rnd = random.Random(seed)
    lines = [line for lang in rnd.sample(LANGS, 5) for line in load(lang).lines]
    recs = [rec(i * 1000, line) for i, line in enumerate(lines)]
    j = MultilineJoiner(rule_set(rnd.choice(["auto", *LANGS])), max_bytes=rnd.choice([64, 500, 1 << 20]))
    out: list[Record] = []
    now = 0.0
    for r in recs:
        now += rnd.choice([0.0, 0.01, 0.5, 3.0])
        out.extend(j.flush_expired(now))
        out.extend(j.push(r, now))
    out.extend(j.flush())
    assert "\n".join(r.message for r in out) == "\n".join(lines)
    offsets = [r.offset for r in out]
    assert offsets == sorted(set(offsets))
    assert {r.offset for r in out} <= {r.offset for r in recs}
    assert sum(r.size for r in out) == sum(r.size for r in recs)
