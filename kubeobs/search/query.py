"""The query language of ``kubeobs logs``: one tokenizer, one parser, one model for both backends.

Grammar (``NOT`` binds tighter than ``AND``, ``AND`` tighter than ``OR``; juxtaposition is ``AND``)::

    query   := or?
    or      := and ("OR" and)*
    and     := unary ("AND"? unary)*
    unary   := ("NOT" | "-") unary | "(" or ")" | term
    term    := word | "phrase" | word* | field:value | field:"value"

- A ``word`` or ``"phrase"`` searches ``message``: the backend splits it into words with its own
  analyzer and looks for those words next to each other, case-insensitively. ``word*`` finds words
  starting with ``word`` (letters and digits only). A ``?`` in text is an ordinary character.
- ``field:value`` filters a document field (:data:`FIELDS`, or ``labels.<key>``) by exact, case-sensitive
  value; ``*`` and ``?`` in the value make it a glob. ``message:...`` is the same as a bare term.
- ``AND``, ``OR``, ``NOT`` are operators only in capitals; ``-term`` is ``NOT term``. Parentheses and
  double quotes are never part of a word: quote a text that contains them, or a colon.

The model is a tree of frozen dataclasses (:data:`Node`); every leaf keeps its position in the query text
so a backend problem can be reported at the token. Errors raise :class:`QueryError` whose ``str`` is the
one line the CLI prints: ``unknown field 'podd' at column 1 (known: ...)``.

Example::

    >>> describe(parse('error -namespace:kube-system pod:web-*'))
    '(AND "error" (NOT kubernetes.namespace=kube-system) kubernetes.pod.name~web-*)'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FIELDS",
    "LABELS_PATH",
    "MESSAGE",
    "All",
    "And",
    "Exists",
    "Match",
    "Node",
    "Not",
    "Or",
    "QueryError",
    "Text",
    "all_of",
    "any_of",
    "describe",
    "field_filter",
    "label_path",
    "label_selector",
    "parse",
]

MESSAGE = "message"
LABELS_PATH = "kubernetes.labels"

# User-facing field names (and the document paths themselves) -> document path.
FIELDS: dict[str, str] = {
    "message": MESSAGE,
    "msg": MESSAGE,
    "namespace": "kubernetes.namespace",
    "ns": "kubernetes.namespace",
    "pod": "kubernetes.pod.name",
    "pod_uid": "kubernetes.pod.uid",
    "container": "kubernetes.container.name",
    "node": "kubernetes.node.name",
    "host": "kubernetes.node.name",
    "stream": "stream",
    "file": "log.file.path",
    "path": "log.file.path",
    "image": "container.image.name",
    "container_id": "container.id",
}
for _path in set(FIELDS.values()):
    FIELDS.setdefault(_path, _path)
_LABEL_PREFIXES = ("labels.", "label.", "kubernetes.labels.")
_KNOWN = "message, namespace, pod, container, node, stream, labels.<key>, file, image, container_id, pod_uid"

# A Kubernetes label key: optional DNS-subdomain prefix and "/", then a name; dots already "_" or not.
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,315}[A-Za-z0-9])?")
_FIELD_NAME = re.compile(r"[A-Za-z_@][A-Za-z0-9_.@/-]*")


class QueryError(ValueError):
    """A query the parser rejects; ``pos`` is the 0-based offset of the offending token (or None)."""

    def __init__(self, message: str, pos: int | None = None, source: str = "", detail: str = "") -> None:
        self.message = message
        self.pos = pos
        self.source = source  # where the text came from, e.g. "-l" (empty: the query)
        self.detail = detail  # said after the position
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" at column {self.pos + 1}" if self.pos is not None else ""
        text = f"{self.message}{where}{self.detail}"
        return f"{self.source}: {text}" if self.source else text


# --- the model ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """Full text over ``message``: a word or phrase (words next to each other), or a word prefix."""

    text: str
    prefix: bool = False
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    """``field`` (a document path) equals ``value``, or matches it as a glob (``*``, ``?``)."""

    field: str
    value: str
    glob: bool = False
    pos: int = 0


@dataclass(frozen=True, slots=True)
class Exists:
    """The document has ``field`` (used for label selectors ``-l key`` / ``-l '!key'``)."""

    field: str
    pos: int = 0


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class All:
    """Every document (the empty query)."""


Node = Text | Match | Exists | And | Or | Not | All


def all_of(nodes: Iterable[Node]) -> Node:
    """``AND`` of ``nodes``, flattened; :class:`All` children vanish; no children: :class:`All`."""
    flat: list[Node] = []
    for n in nodes:
        if isinstance(n, And):
            flat.extend(n.children)
        elif not isinstance(n, All):
            flat.append(n)
    if not flat:
        return All()
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def any_of(nodes: Iterable[Node]) -> Node:
    """``OR`` of ``nodes``, flattened; an :class:`All` child makes it :class:`All`."""
    flat: list[Node] = []
    for n in nodes:
        if isinstance(n, All):
            return All()
        flat.extend(n.children if isinstance(n, Or) else (n,))
    if not flat:
        raise ValueError("any_of() needs at least one node")
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def describe(node: Node) -> str:
    """A compact, unambiguous text form of a model (tests, ``--explain``)."""
    match node:
        case Text(text, prefix):
            return f'"{text}"' + ("*" if prefix else "")
        case Match(field, value, glob):
            return f"{field}{'~' if glob else '='}{value}"
        case Exists(field):
            return f"{field}?"
        case And(children):
            return "(AND " + " ".join(describe(c) for c in children) + ")"
        case Or(children):
            return "(OR " + " ".join(describe(c) for c in children) + ")"
        case Not(child):
            return f"(NOT {describe(child)})"
        case All():
            return "*"
    raise TypeError(node)


# --- tokens --------------------------------------------------------------------------------------------

_Kind = Literal["word", "phrase", "field", "lparen", "rparen", "and", "or", "not", "neg", "end"]


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str  # word/phrase text; for "field": the value
    pos: int
    field: str = ""  # for "field": the name as typed
    quoted: bool = False  # for "field": the value was a quoted string
    value_pos: int = 0  # for "field": where the value starts


_DELIMS = frozenset(' \t\r\n()"')


def _read_quoted(q: str, start: int) -> tuple[str, int]:
    """The string starting at the quote ``q[start]``; returns (text, index after the closing quote)."""
    out: list[str] = []
    i = start + 1
    while i < len(q):
        c = q[i]
        if c == "\\" and i + 1 < len(q) and q[i + 1] in '"\\':
            out.append(q[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise QueryError("unterminated quote", start)


def tokenize(q: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(q)
    while i < n:
        c = q[i]
        if c.isspace():
            i += 1
        elif c == "(":
            tokens.append(_Token("lparen", c, i))
            i += 1
        elif c == ")":
            tokens.append(_Token("rparen", c, i))
            i += 1
        elif c == '"':
            text, end = _read_quoted(q, i)
            tokens.append(_Token("phrase", text, i))
            i = end
        elif c == "-" and i + 1 < n and not q[i + 1].isspace() and q[i + 1] != ")":
            tokens.append(_Token("neg", c, i))
            i += 1
        else:
            start = i
            while i < n and q[i] not in _DELIMS:
                i += 1
            word = q[start:i]
            name, colon, value = word.partition(":")
            if colon and _FIELD_NAME.fullmatch(name):
                if not value and i < n and q[i] == '"':
                    text, end = _read_quoted(q, i)
                    tokens.append(_Token("field", text, start, name, True, i))
                    i = end
                else:
                    tokens.append(_Token("field", value, start, name, False, start + len(name) + 1))
            elif word in ("AND", "OR", "NOT"):
                tokens.append(_Token(word.lower(), word, start))  # type: ignore[arg-type]
            else:
                tokens.append(_Token("word", word, start))
    tokens.append(_Token("end", "", n))
    return tokens


# --- leaves --------------------------------------------------------------------------------------------


def _has_searchable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _text_leaf(text: str, pos: int, *, quoted: bool) -> Text:
    """A message search for a word, a phrase or (unquoted ``word*``) a prefix."""
    if not quoted and text.endswith("*"):
        stem = text.rstrip("*")
        if not stem:
            raise QueryError("'*' alone", pos, detail=": leave the query empty to match every line")
        if not stem.isalnum():
            raise QueryError(
                f"prefix search {text!r}", pos, detail=": only letters and digits may come before the '*'"
            )
        return Text(stem, prefix=True, pos=pos)
    if not quoted and "*" in text:
        raise QueryError(f"wildcard in {text!r}", pos, detail=": text search allows '*' only at a word's end")
    if not _has_searchable(text):
        raise QueryError(f"nothing to search for in {text!r}", pos, detail=" (no letters or digits)")
    return Text(text, prefix=False, pos=pos)


def label_path(key: str, pos: int = 0, source: str = "") -> str:
    """The document path of label ``key``; dots become ``_`` as the collector stores them."""
    if not _LABEL_KEY.fullmatch(key):
        raise QueryError(f"bad label key {key!r}", pos, source)
    return f"{LABELS_PATH}.{key.replace('.', '_')}"


def _field_path(name: str, pos: int) -> str:
    path = FIELDS.get(name)
    if path is not None:
        return path
    for prefix in _LABEL_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return label_path(name[len(prefix) :], pos + len(prefix))
    if name.rstrip(".") in ("labels", "label", LABELS_PATH):
        raise QueryError(f"field {name!r}", pos, detail=" needs a label key: labels.<key>:value")
    hint = difflib.get_close_matches(name, list(FIELDS), n=1)
    did = f"; did you mean '{hint[0]}'?" if hint else "; to search for text with a ':', quote it"
    raise QueryError(f"unknown field {name!r}", pos, detail=f" (known: {_KNOWN}){did}")


def field_filter(name: str, value: str, pos: int = 0, *, quoted: bool = False, value_pos: int = 0) -> Node:
    """The node for ``name:value`` (``name`` as a user types it)."""
    path = _field_path(name, pos)
    if path == MESSAGE:
        return _text_leaf(value, value_pos, quoted=quoted)
    if not value:
        raise QueryError(f"empty value for field {name!r}", pos)
    return Match(path, value, glob=("*" in value or "?" in value), pos=pos)


def label_selector(selector: str, source: str = "-l") -> Node:
    """A kubectl-style label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-separated (AND).

    ``k!=v`` also matches lines without the label, as kubectl's does.
    """
    parts: list[Node] = []
    pos = 0
    for item in selector.split(","):
        raw = item
        item = item.strip()
        at = pos + (len(raw) - len(raw.lstrip()))
        pos += len(raw) + 1
        if not item:
            raise QueryError(f"empty requirement in label selector {selector!r}", at, source)
        if "!=" in item:
            key, value = (s.strip() for s in item.split("!=", 1))
            parts.append(Not(Match(label_path(key, at, source), _label_value(value, at, source), pos=at)))
        elif "=" in item:
            key, _, value = item.replace("==", "=", 1).partition("=")
            key, value = key.strip(), value.strip()
            parts.append(Match(label_path(key, at, source), _label_value(value, at, source), pos=at))
        elif item.startswith("!"):
            parts.append(Not(Exists(label_path(item[1:].strip(), at + 1, source), pos=at)))
        else:
            parts.append(Exists(label_path(item, at, source), pos=at))
    return all_of(parts)


def _label_value(value: str, pos: int, source: str) -> str:
    if not value:
        raise QueryError("empty label value (use 'key' to ask for the label to exist)", pos, source)
    return value


# --- parser --------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: Sequence[_Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Node:
        if self.peek().kind == "end":
            return All()
        node = self.or_()
        tok = self.peek()
        if tok.kind == "rparen":
            raise QueryError("unbalanced ')'", tok.pos)
        if tok.kind != "end":  # pragma: no cover - or_() consumes everything else
            raise QueryError(f"unexpected {tok.text!r}", tok.pos)
        return node

    def or_(self) -> Node:
        children = [self.and_()]
        while self.peek().kind == "or":
            op = self.take()
            self._operand_after(op)
            children.append(self.and_())
        return any_of(children)

    def and_(self) -> Node:
        children = [self.unary()]
        while True:
            tok = self.peek()
            if tok.kind == "and":
                self.take()
                self._operand_after(tok)
            elif tok.kind in ("end", "rparen", "or"):
                break
            children.append(self.unary())
        return children[0] if len(children) == 1 else And(tuple(children))

    def _operand_after(self, op: _Token) -> None:
        nxt = self.peek()
        if nxt.kind in ("end", "rparen", "or", "and"):
            raise QueryError(f"'{op.text}'", op.pos, detail=" needs a term on its right")

    def unary(self) -> Node:
        tok = self.peek()
        if tok.kind in ("not", "neg"):
            self.take()
            nxt = self.peek()
            if nxt.kind in ("end", "rparen", "or", "and"):
                raise QueryError(f"'{tok.text}'", tok.pos, detail=" needs a term after it")
            return Not(self.unary())
        if tok.kind in ("and", "or"):
            raise QueryError(f"'{tok.text}'", tok.pos, detail=" needs a term on its left")
        if tok.kind == "lparen":
            self.take()
            if self.peek().kind == "rparen":
                raise QueryError("empty parentheses", tok.pos)
            if self.peek().kind == "end":
                raise QueryError("'('", tok.pos, detail=" is never closed")
            node = self.or_()
            if self.peek().kind != "rparen":
                raise QueryError("'('", tok.pos, detail=" is never closed")
            self.take()
            return node
        if tok.kind == "rparen":
            raise QueryError("unbalanced ')'", tok.pos)
        self.take()
        if tok.kind == "word":
            return _text_leaf(tok.text, tok.pos, quoted=False)
        if tok.kind == "phrase":
            return _text_leaf(tok.text, tok.pos, quoted=True)
        if tok.kind == "field":
            return field_filter(tok.field, tok.text, tok.pos, quoted=tok.quoted, value_pos=tok.value_pos)
        raise QueryError(f"unexpected {tok.text!r}", tok.pos)  # pragma: no cover


def parse(query: str) -> Node:
    """The model of ``query``; raises :class:`QueryError` pointing at the offending token."""
    return _Parser(tokenize(query)).parse()
