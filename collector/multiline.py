"""Multiline joining: a stack trace (or any multi-line event) becomes one record. Pure: no I/O, no clock.

Where it sits: after :class:`~collector.lines.LineAssembler` has reassembled CRI/docker partial lines, so
the joiner only ever sees complete lines. The caller keeps **one** :class:`MultilineJoiner` **per
(file, stream)**: stdout and stderr of a container are written concurrently, and a trace on stderr
must not swallow a line of stdout. A joiner that is handed a record of another file or stream while it
holds an event ends that event first (a safeguard, not a way to share joiners).

Model. A :class:`RuleSet` is a small state machine over lines. A line arriving while nothing is held is
tried against the rules of the ``start`` state; if one matches, the line opens an event in that rule's
``next`` state. While an event is held, the next line is tried against the current state's rules, in
order; the first that matches decides the next state (``end``: the line closes the event, which is
emitted at once). A line that matches none closes the held event (which is emitted without it) and is
then treated as a fresh line. A *tentative* rule (used for the blank lines between a Python exception and
``During handling of the above exception...``, or between goroutine blocks) sets the line aside: it
joins the event only if a later line continues it, and otherwise is emitted as its own record, after
the event. Continuation rules are tried before the start rules: in a held event, a line that continues
it joins it even if it could also start an event.

Built-in rule sets (:data:`BUILTIN`, looked up by :func:`rule_set`): ``java``, ``python``, ``go``,
``ruby``, ``node``, and ``auto``, which tries them all in that order; the first whose start rule
matches a line owns the event. Custom rules: ``RuleSet.custom(start=r"^\\d{4}-", cont=r"^\\s")`` (the
usual start/continuation pair), or any state machine as a list of :class:`Rule`.

Not joined on purpose: the log line a framework writes *before* a trace (``ERROR ... Unhandled
exception``) stays a record of its own, because nothing in a line says that a trace will follow it.

The joined event: ``message`` is the lines joined with ``"\\n"``; ``offset`` and ``timestamp`` are the
first line's (so its ``_id`` is the first line's); ``size`` is the sum; ``ckpt`` is the last line's;
``tags`` are the union of the lines' tags. A single-line event is the record itself, unchanged.

Checkpoints: while an event is held, :meth:`MultilineJoiner.pending_offset` is the offset of its first
line; the caller must not checkpoint the file past it (the other stream's records can be delivered
meanwhile). Records are emitted in the order of the file within one joiner.

Limits: ``max_bytes`` (default 1 MiB of UTF-8 message, newlines included) caps an event: the line that
would push it over starts a new event in the same state, so a huge trace becomes several records and
nothing is dropped. ``timeout`` (default 2 s): :meth:`MultilineJoiner.flush_expired` emits an event no
line has arrived for within that time, so the last trace of a quiet container is not held. The caller
passes ``now`` (any monotonic clock) and decides when to call it; a caller that pauses reading a file
(backpressure) should not expire that file's events meanwhile, or a trace may be cut in two.
Records with a parse error, and parts of a split over-long line (``part != 0``), are never joined: they
end a held event and pass through.

Metrics: :class:`JoinStats` on ``joiner.stats`` (multi-line events, lines joined into them, events cut
by the cap, events flushed by the timeout), for the caller to export.

Cost: a line that opens no event while nothing is held costs one precompiled regex ``match``: the
start rules of a rule set are one alternation, behind a lookahead that rejects lines beginning with
``{``, ``[`` or a digit (JSON, bracketed or numeric timestamps, access logs) at their first character.
While an event is held, a line costs one ``match`` against its state's rules (two when it ends the
event and is then tried as a start).

Example::

    joiner = MultilineJoiner(rule_set("auto"))
    out = joiner.push(record, now=clock())      # records/events ready to ship, in order
    out += joiner.flush_expired(clock())        # on a timer
    hold = joiner.pending_offset()              # checkpoint no further than this
    out += joiner.flush()                       # end of file
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from collector.record import Record

__all__ = [
    "BUILTIN",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "END",
    "START",
    "JoinStats",
    "MultilineJoiner",
    "Rule",
    "RuleSet",
    "rule_set",
]

START = "start"  # the state every event begins in
END = "end"  # a rule whose ``next`` is END closes the event with its line
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Rule:
    """A line matching ``pattern`` (anchored at the line's start) in ``state`` moves the event to ``next``.

    ``tentative``: the line is set aside and joins the event only if a later line continues it.
    """

    state: str
    pattern: str
    next: str
    tentative: bool = False


# (next state or None for END, tentative)
_Target = tuple["_State | None", bool]

_LEADING_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


class _State:
    """One state, compiled: its rules as one regex, and what each alternative leads to."""

    __slots__ = ("_by_group", "_only", "name", "regex")

    def __init__(self, name: str) -> None:
        self.name = name
        self.regex: re.Pattern[str] = re.compile("(?!)")
        self._only: _Target | None = None
        self._by_group: dict[str | None, _Target] = {}

    def compile(self, set_name: str, rules: Sequence[tuple[str, _Target]], guard: str = "") -> None:
        where = f"multiline rules {set_name!r}, state {self.name!r}"
        for pattern, _ in rules:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{where}: {pattern!r}: {e}") from e
        if len(rules) == 1 and not guard:
            self.regex = re.compile(rules[0][0])
            self._only = rules[0][1]
            return
        if len(rules) == 1:
            self._only = rules[0][1]
            body = f"(?:{_scope_flags(rules[0][0])})"
        else:
            pieces = []
            for i, (pattern, target) in enumerate(rules):
                pieces.append(f"(?P<_ml{i}>{_scope_flags(pattern)})")
                self._by_group[f"_ml{i}"] = target
            body = "|".join(pieces)
        try:
            self.regex = re.compile(f"{guard}(?:{body})" if guard else body)
        except re.error as e:
            raise ValueError(f"{where}: cannot combine the rules: {e}") from e

    def target(self, m: re.Match[str]) -> _Target:
        only = self._only
        if only is not None:
            return only
        # each alternative is wrapped in a named group that closes last, so lastgroup names it
        return self._by_group[m.lastgroup]


def _scope_flags(pattern: str) -> str:
    """Global inline flags (``(?i)...``) are only legal at a regex's start: make them scoped."""
    m = _LEADING_FLAGS.match(pattern)
    return pattern if m is None else f"(?{m.group(1)}:{pattern[m.end() :]})"


def _scoped(prefix: str, state: str) -> str:
    return state if state in (START, END) else f"{prefix}.{state}"


class RuleSet:
    """Compiled rules, immutable: build once, share between all joiners that use them."""

    __slots__ = ("guard", "name", "rules", "start")

    def __init__(self, name: str, rules: Iterable[Rule], *, guard: str = "") -> None:
        """``guard``: an optional lookahead that every start line satisfies, checked before the start
        rules (one regex still): the built-in sets use it to reject lines that begin with ``{``, ``[``
        or a digit (JSON, timestamps, access logs) at their first character."""
        self.name = name
        self.guard = guard
        self.rules: tuple[Rule, ...] = tuple(rules)
        by_state: dict[str, list[Rule]] = {}
        for r in self.rules:
            by_state.setdefault(r.state, []).append(r)
        if START not in by_state:
            raise ValueError(f"multiline rules {name!r}: no {START!r} rule")
        states = {s: _State(s) for s in by_state}
        for s, rs in by_state.items():
            targets: list[tuple[str, _Target]] = []
            for r in rs:
                if r.next == END:
                    if r.tentative:
                        raise ValueError(f"multiline rules {name!r}: a tentative rule cannot end the event")
                    targets.append((r.pattern, (None, False)))
                    continue
                if r.next not in states:
                    raise ValueError(f"multiline rules {name!r}: state {r.next!r} has no rules")
                if r.next == START:
                    raise ValueError(f"multiline rules {name!r}: no rule may lead back to {START!r}")
                if r.tentative and s == START:
                    raise ValueError(f"multiline rules {name!r}: a start rule cannot be tentative")
                targets.append((r.pattern, (states[r.next], r.tentative)))
            states[s].compile(name, targets, guard if s == START else "")
        self.start: _State = states[START]

    @classmethod
    def custom(cls, start: str, cont: str, name: str = "custom") -> RuleSet:
        """A line matching ``start`` opens an event; following lines matching ``cont`` join it."""
        return cls(name, [Rule(START, start, "cont"), Rule("cont", cont, "cont")])

    @classmethod
    def combine(cls, name: str, sets: Sequence[RuleSet]) -> RuleSet:
        """All the sets' rules; start rules tried in the order given, other states kept apart.

        The guard is kept when all the sets share one."""
        guards = {rs.guard for rs in sets}
        rules = [
            Rule(_scoped(rs.name, r.state), r.pattern, _scoped(rs.name, r.next), r.tentative)
            for rs in sets
            for r in rs.rules
        ]
        return cls(name, rules, guard=guards.pop() if len(guards) == 1 else "")

    def __repr__(self) -> str:
        return f"RuleSet({self.name!r}, {len(self.rules)} rules)"


# -- built-in rules ---------------------------------------------------------------------------------
# Start rules may be loose (a false start only holds a line until the next one arrives); continuation
# rules are strict (a false continuation would glue unrelated lines together).

_BLANK = r"\s*$"
# no built-in start line begins with "{", "[" or a digit; most ordinary log lines do
_GUARD = r"(?![{\[\d])"

_JAVA_FRAME = r"\s+at \S"
_JAVA_OMITTED = r"\s+\.\.\. \d+ (?:more|common frames omitted)\s*$"
_JAVA_NESTED = r"\s*(?:Caused by|Suppressed|Wrapped by): "
JAVA = RuleSet(
    "java",
    [
        # java.lang.IllegalStateException: msg / Exception in thread "main" com.x.FooError
        Rule(
            START,
            r'(?:Exception in thread "[^"]*" )?[a-zA-Z_$][\w$]*+\.[\w$.]*+'
            r"(?:(?<=Exception)|(?<=Error)|(?<=Throwable))(?::|$)",
            "head",
        ),
        # after an exception line: frames, causes, or indented lines of a multi-line message
        Rule("head", _JAVA_FRAME, "frames"),
        Rule("head", _JAVA_NESTED, "head"),
        Rule("head", _JAVA_OMITTED, "frames"),
        Rule("head", r"\s+\S", "head"),
        Rule("frames", _JAVA_FRAME, "frames"),
        Rule("frames", _JAVA_OMITTED, "frames"),
        Rule("frames", _JAVA_NESTED, "head"),
        Rule("frames", r"\s*\[CIRCULAR REFERENCE: ", "frames"),
    ],
    guard=_GUARD,
)

_PY_TRACEBACK = r"Traceback \(most recent call last\):\s*$"
_PY_GROUP = r"\s*\+ Exception Group Traceback \(most recent call last\):\s*$"
_PY_CHAIN = (
    r"(?:During handling of the above exception, another exception occurred"
    r"|The above exception was the direct cause of the following exception):\s*$"
)
PYTHON = RuleSet(
    "python",
    [
        Rule(START, _PY_TRACEBACK, "tb"),
        Rule(START, _PY_GROUP, "group"),
        # File "...", line N / code / ^^^^ / [Previous line repeated N more times]
        Rule("tb", r"\s+\S", "tb"),
        # the exception line closes the frames: KeyError: 'x' / KeyboardInterrupt / pkg.mod.Error: msg
        Rule("tb", r"[A-Za-z_][\w.]*(?::.*)?$", "raised"),
        # a chained exception may follow, after a blank line
        Rule("raised", _PY_CHAIN, "chain"),
        Rule("raised", r"\s+\S", "raised"),  # indented lines of a multi-line message
        Rule("raised", _BLANK, "gap", tentative=True),
        Rule("gap", _PY_CHAIN, "chain"),
        Rule("chain", _PY_TRACEBACK, "tb"),
        Rule("chain", _PY_GROUP, "group"),
        Rule("chain", _BLANK, "chain"),
        # exception groups (3.11+): every line is indented ("  | ...", "  +-+---- 1 ----")
        Rule("group", r"\s+\S", "group"),
        Rule("group", _BLANK, "gap", tentative=True),
    ],
    guard=_GUARD,
)

_GO_GOROUTINE = r"(?:goroutine \d+ .*\]|\[originating from goroutine \d+\]|runtime stack):\s*$"
_GO_REGISTER = r"[a-z][a-z0-9]{1,6}\s+0x[0-9a-f]+\s*$"
_GO_EXIT = r"exit status \d+\s*$"
GO = RuleSet(
    "go",
    [
        Rule(START, r"(?:panic|fatal error|runtime): \S", "head"),
        Rule(START, r"SIG[A-Z]+: \S", "head"),  # SIGQUIT: quit (full dump)
        Rule(START, r"goroutine \d+ .*\]:\s*$", "block"),  # a dump printed by the program itself
        # panic: msg [recovered] / \tpanic: msg / [signal SIGSEGV: ...] / PC=0x... m=0 sigcode=0
        Rule("head", r"(?:panic|fatal error|runtime): \S", "head"),
        Rule("head", r"\[signal |PC=0x", "head"),
        Rule("head", r"\s+\S", "head"),
        Rule("head", _GO_GOROUTINE, "block"),
        Rule("head", _BLANK, "gap", tentative=True),
        # blocks are separated by blank lines: only a block (or the register dump) continues after one
        Rule("gap", _GO_GOROUTINE, "block"),
        Rule("gap", _GO_REGISTER, "registers"),
        Rule("gap", _GO_EXIT, END),
        # frames: "pkg.(*T).Method(0xc000..., ...)" then "\t/src/file.go:N +0x2f"
        Rule("block", r"\s+\S", "block"),
        Rule("block", r"[^\s(]+\(.*\)\s*$", "block"),
        Rule("block", r"created by \S", "block"),
        Rule("block", r"\.\.\.additional frames elided\.\.\.\s*$", "block"),
        Rule("block", _GO_GOROUTINE, "block"),
        Rule("block", _GO_EXIT, END),
        Rule("block", _BLANK, "gap", tentative=True),
        Rule("registers", _GO_REGISTER, "registers"),
        Rule("registers", _GO_EXIT, END),
    ],
    guard=_GUARD,
)

_RUBY_RAISED = r"[^\s:]++:\d++:in [`']"  # /app/x.rb:27:in `call': msg (NoMethodError)   (3.4: 'X#call')
_RUBY_FROM = r"\s+from \S+:\d+"
_RUBY_LEVELS = r"\s+\.\.\. \d+ levels\.\.\.\s*$"
RUBY = RuleSet(
    "ruby",
    [
        Rule(START, _RUBY_RAISED, "head"),
        Rule("head", _RUBY_FROM, "frames"),
        Rule("head", _RUBY_LEVELS, "frames"),
        Rule("frames", _RUBY_FROM, "frames"),
        Rule("frames", _RUBY_LEVELS, "frames"),
        Rule("frames", _RUBY_RAISED, "head"),  # the cause, printed after the backtrace (Ruby >= 3.1)
    ],
    guard=_GUARD,
)

_NODE_FRAME = r"\s+at \S"
_NODE_FRAME_PROPS = r"\s+at .*\{\s*$"  # the last frame opens the error's own properties
_NODE_FOOTER = r"Node\.js v\d+\.\d+\.\d+\s*$"
NODE = RuleSet(
    "node",
    [
        # TypeError: msg / Error [ERR_X]: msg / Error
        Rule(START, r"[A-Za-z_$][\w$]*+(?:(?<=Error)|(?<=Exception))(?: \[[\w.]+\])?(?::|$)", "error"),
        # an uncaught exception: "/app/server.js:48", the source line, a caret line, a blank, the error
        Rule(START, r"(?:/|node:|file:///)\S*:\d+\s*$", "source"),
        Rule("source", r".*$", "code"),
        Rule("code", r"\s*\^+\s*$", "caret"),
        Rule("caret", _BLANK, "raised"),
        Rule("caret", r"\S", "error"),  # a thrown non-Error value comes without the blank
        Rule("raised", r"\S.*\{\s*$", "props"),
        Rule("raised", r"\S", "error"),
        # after the error line: frames, or lines of a multi-line message, or properties
        Rule("error", _NODE_FRAME_PROPS, "props"),
        Rule("error", _NODE_FRAME, "frames"),
        Rule("error", r"\}\s*$", "closed"),
        Rule("error", r"Require stack:\s*$|- \S|\(Use `node ", "error"),
        Rule("error", r"\s+\S", "error"),
        Rule("error", _BLANK, "tail", tentative=True),
        Rule("frames", _NODE_FRAME_PROPS, "props"),
        Rule("frames", _NODE_FRAME, "frames"),
        Rule("frames", r"\s+\.\.\. \d+ ", "frames"),  # ... 6 lines matching cause stack trace ...
        Rule("frames", _BLANK, "tail", tentative=True),
        # { code: 'ECONNREFUSED', [cause]: Error: ...  at ..., [errors]: [ ... ] }
        Rule("props", r"\}\s*$", "closed"),
        Rule("props", r"\s+\S", "props"),
        Rule("closed", _NODE_FOOTER, END),
        Rule("closed", _BLANK, "tail", tentative=True),
        Rule("tail", _NODE_FOOTER, END),
    ],
    guard=_GUARD,
)

AUTO = RuleSet.combine("auto", [JAVA, PYTHON, GO, RUBY, NODE])

BUILTIN: Mapping[str, RuleSet] = MappingProxyType(
    {rs.name: rs for rs in (JAVA, PYTHON, GO, RUBY, NODE, AUTO)}
)


def rule_set(name: str) -> RuleSet:
    """The built-in rule set called ``name`` (config value or ``kubeobs.io/multiline`` annotation)."""
    try:
        return BUILTIN[name]
    except KeyError:
        raise ValueError(f"unknown multiline rules {name!r}; known: {', '.join(BUILTIN)}") from None


# -- the joiner -------------------------------------------------------------------------------------


@dataclass(slots=True)
class JoinStats:
    events: int = 0  # multi-line events emitted
    joined_lines: int = 0  # lines folded into those events
    capped: int = 0  # events cut because the next line would pass max_bytes
    timed_out: int = 0  # events emitted by flush_expired


def _nbytes(message: str) -> int:
    return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))


class MultilineJoiner:
    """Joins the records of one (file, stream) into events; see the module docstring for the contract.

    ``rules=None`` makes a pass-through joiner (every record is emitted as it comes).
    """

    __slots__ = (
        "_bytes",
        "_last",
        "_max",
        "_records",
        "_start",
        "_state",
        "_tentative",
        "_tentative_bytes",
        "_timeout",
        "rules",
        "stats",
    )

    def __init__(
        self,
        rules: RuleSet | None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.rules = rules
        self._start = rules.start if rules is not None else None
        self._max = max_bytes
        self._timeout = timeout
        self._state: _State | None = None  # state of the held event; None: nothing is held
        self._records: list[Record] = []  # the held event's lines
        self._bytes = 0  # its message size: lines plus joining newlines
        self._tentative: list[Record] = []  # lines set aside after it
        self._tentative_bytes = 0
        self._last = 0.0  # when a line last arrived for the held event
        self.stats = JoinStats()

    def push(self, record: Record, now: float) -> list[Record]:
        """Take the next record of the stream; return what is ready to ship, in order."""
        if self._state is not None:
            return self._push_held(record, now)
        start = self._start
        if start is None or record.error is not None or record.part:
            return [record]
        m = start.regex.match(record.message)
        if m is None:
            return [record]
        nxt = start.target(m)[0]
        if nxt is None:
            return [record]
        self._state = nxt
        self._records.append(record)
        self._bytes = _nbytes(record.message)
        self._last = now
        return []

    def flush(self) -> list[Record]:
        """Emit whatever is held (end of file, shutdown, configuration change)."""
        return self._take() if self._state is not None else []

    def flush_expired(self, now: float) -> list[Record]:
        """Emit the held event if no line has arrived for it for ``timeout`` seconds."""
        if self._state is None or now - self._last < self._timeout:
            return []
        self.stats.timed_out += 1
        return self._take()

    def deadline(self) -> float | None:
        """When :meth:`flush_expired` will emit the held event (None: nothing is held)."""
        return self._last + self._timeout if self._state is not None else None

    def pending_offset(self) -> int | None:
        """Offset of the first record held back (None: nothing is held)."""
        return self._records[0].offset if self._state is not None else None

    # -- internals ---------------------------------------------------------------------------------
    def _push_held(self, record: Record, now: float) -> list[Record]:
        state = self._state
        assert state is not None
        first = self._records[0]
        if (
            record.error is None
            and not record.part
            and record.stream == first.stream
            and record.file is first.file
        ):
            m = state.regex.match(record.message)
            if m is not None:
                nxt, tentative = state.target(m)
                size = _nbytes(record.message)
                if not tentative:
                    out = self._commit(record, size)
                    self._last = now
                    if nxt is None:
                        out.extend(self._take())
                    else:
                        self._state = nxt
                    return out
                if self._bytes + self._tentative_bytes + size + 1 <= self._max:
                    self._tentative.append(record)
                    self._tentative_bytes += size + 1
                    self._state = nxt
                    self._last = now
                    return []
        out = self._take()
        out.extend(self.push(record, now))
        return out

    def _commit(self, record: Record, size: int) -> list[Record]:
        """Add the set-aside lines and ``record`` to the event; cut the event first if they overflow it."""
        out: list[Record] = []
        added = self._tentative_bytes + size + 1
        if self._bytes + added > self._max:
            # the event so far is complete; the blank lines between go out on their own, and this
            # line begins the next part of the event, in the same state
            out.append(self._event())
            out.extend(self._tentative)
            self.stats.capped += 1
            self._records = [record]
            self._bytes = size
        else:
            self._records.extend(self._tentative)
            self._records.append(record)
            self._bytes += added
        self._tentative.clear()
        self._tentative_bytes = 0
        return out

    def _take(self) -> list[Record]:
        out = [self._event()]
        if self._tentative:
            out.extend(self._tentative)
            self._tentative = []
            self._tentative_bytes = 0
        self._records = []
        self._bytes = 0
        self._state = None
        return out

    def _event(self) -> Record:
        recs = self._records
        if len(recs) == 1:
            return recs[0]
        first = recs[0]
        tags = tuple(dict.fromkeys(t for r in recs for t in r.tags)) if any(r.tags for r in recs) else ()
        self.stats.events += 1
        self.stats.joined_lines += len(recs)
        return Record(
            first.file,
            first.offset,
            recs[-1].ckpt,
            first.timestamp,
            first.stream,
            "\n".join([r.message for r in recs]),
            sum(r.size for r in recs),
            tags=tags,
        )
