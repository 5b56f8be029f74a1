"""The query language: a table of queries to models, and a table of bad queries to their one-line errors."""

from __future__ import annotations

import pytest

from kubeobs.search.query import (
    All,
    And,
    Exists,
    Match,
    Not,
    Or,
    QueryError,
    Text,
    all_of,
    any_of,
    describe,
    label_selector,
    parse,
)

PARSES = [
    ("", "*"),
    ("   ", "*"),
    ("error", '"error"'),
    ("Error", '"Error"'),
    ('"connection refused"', '"connection refused"'),
    ('"say \\"hi\\" \\\\ there"', '"say "hi" \\ there"'),
    ("time*", '"time"*'),
    ("error timeout", '(AND "error" "timeout")'),
    ("error AND timeout", '(AND "error" "timeout")'),
    ("error OR timeout", '(OR "error" "timeout")'),
    ("a OR b c", '(OR "a" (AND "b" "c"))'),
    ("a b OR c", '(OR (AND "a" "b") "c")'),
    ("a OR b OR c", '(OR "a" "b" "c")'),
    ("(a OR b) c", '(AND (OR "a" "b") "c")'),
    ("NOT a", '(NOT "a")'),
    ("-a", '(NOT "a")'),
    ("a -b", '(AND "a" (NOT "b"))'),
    ("a AND NOT b", '(AND "a" (NOT "b"))'),
    ("NOT NOT a", '(NOT (NOT "a"))'),
    ("-(a OR b)", '(NOT (OR "a" "b"))'),
    ('-"a b"', '(NOT "a b")'),
    ("NOT a OR b", '(OR (NOT "a") "b")'),
    ("((a))", '"a"'),
    ("and or not", '(AND "and" "or" "not")'),  # lowercase: words
    ("a-b", '"a-b"'),  # a dash inside a word is part of it
    ("10.244.1.7", '"10.244.1.7"'),
    ("12:00:01", '"12:00:01"'),  # not a field name: starts with a digit
    ("/api/cart?x=1", '"/api/cart?x=1"'),
    ("namespace:shop", "kubernetes.namespace=shop"),
    ("ns:shop", "kubernetes.namespace=shop"),
    ("kubernetes.namespace:shop", "kubernetes.namespace=shop"),
    ("pod:web-*", "kubernetes.pod.name~web-*"),
    ("pod:web-?", "kubernetes.pod.name~web-?"),
    ('pod:"web 1"', "kubernetes.pod.name=web 1"),
    ("container:nginx", "kubernetes.container.name=nginx"),
    ("node:node-a", "kubernetes.node.name=node-a"),
    ("host:node-a", "kubernetes.node.name=node-a"),
    ("stream:stderr", "stream=stderr"),
    ("file:/var/log/*.log", "log.file.path~/var/log/*.log"),
    ("image:nginx:1.25", "container.image.name=nginx:1.25"),
    ("container_id:abc", "container.id=abc"),
    ("pod_uid:1234", "kubernetes.pod.uid=1234"),
    ("labels.app:web", "kubernetes.labels.app=web"),
    ("label.app:web", "kubernetes.labels.app=web"),
    ("labels.app.kubernetes.io/name:shop", "kubernetes.labels.app_kubernetes_io/name=shop"),
    ("kubernetes.labels.tier:db", "kubernetes.labels.tier=db"),
    ("message:error", '"error"'),
    ('msg:"upstream timed out"', '"upstream timed out"'),
    ("message:time*", '"time"*'),
    ('message:"time*"', '"time*"'),  # quoted: no prefix
    ("-namespace:kube-system error", '(AND (NOT kubernetes.namespace=kube-system) "error")'),
    (
        'error -namespace:kube-system (GET OR "POST /x") pod:web-*',
        '(AND "error" (NOT kubernetes.namespace=kube-system) (OR "GET" "POST /x") kubernetes.pod.name~web-*)',
    ),
    ("café", '"café"'),
]


@pytest.mark.parametrize(("query", "model"), PARSES)
def test_parse(query: str, model: str) -> None:
    assert describe(parse(query)) == model


ERRORS = [
    (
        "podd:web",
        "unknown field 'podd' at column 1 (known: message, namespace, pod, container, node, stream,"
        " labels.<key>, file, image, container_id, pod_uid); did you mean 'pod'?",
    ),
    (
        "error http://example.com",
        "unknown field 'http' at column 7 (known: message, namespace, pod, container, node, stream,"
        " labels.<key>, file, image, container_id, pod_uid); to search for text with a ':', quote it",
    ),
    ('error "unterminated', "unterminated quote at column 7"),
    ("(a OR b", "'(' at column 1 is never closed"),
    ("a (", "'(' at column 3 is never closed"),
    ("a)", "unbalanced ')' at column 2"),
    ("a AND", "'AND' at column 3 needs a term on its right"),
    ("a OR", "'OR' at column 3 needs a term on its right"),
    ("a AND OR b", "'AND' at column 3 needs a term on its right"),
    ("OR a", "'OR' at column 1 needs a term on its left"),
    ("AND a", "'AND' at column 1 needs a term on its left"),
    ("a NOT", "'NOT' at column 3 needs a term after it"),
    ("a (NOT)", "'NOT' at column 4 needs a term after it"),
    ("()", "empty parentheses at column 1"),
    ("x ( )", "empty parentheses at column 3"),
    ("-", "nothing to search for in '-' at column 1 (no letters or digits)"),
    ("error ...", "nothing to search for in '...' at column 7 (no letters or digits)"),
    ('""', "nothing to search for in '' at column 1 (no letters or digits)"),
    ("*", "'*' alone at column 1: leave the query empty to match every line"),
    ("ti*me", "wildcard in 'ti*me' at column 1: text search allows '*' only at a word's end"),
    ("a*?b", "wildcard in 'a*?b' at column 1: text search allows '*' only at a word's end"),
    ("a.b*", "prefix search 'a.b*' at column 1: only letters and digits may come before the '*'"),
    ("x message:a.b*", "prefix search 'a.b*' at column 11: only letters and digits may come before the '*'"),
    ("pod:", "empty value for field 'pod' at column 1"),
    ('pod:""', "empty value for field 'pod' at column 1"),
    ("labels.:x", "field 'labels.' at column 1 needs a label key: labels.<key>:value"),
    ("label:x", "field 'label' at column 1 needs a label key: labels.<key>:value"),
    ('labels.a"b:x', "unterminated quote at column 9"),
    ("labels.-bad-:x", "bad label key '-bad-' at column 8"),
]


@pytest.mark.parametrize(("query", "message"), ERRORS)
def test_errors_point_at_the_token(query: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        parse(query)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_error_column_counts_characters_not_bytes() -> None:
    with pytest.raises(QueryError) as info:
        parse("café naïve podd:x")
    assert info.value.pos == 11
    assert "at column 12" in str(info.value)


def test_leaves_keep_their_positions() -> None:
    node = parse('  error -pod:web-* "a b"')
    assert node == And(
        (
            Text("error", pos=2),
            Not(Match("kubernetes.pod.name", "web-*", glob=True, pos=9)),
            Text("a b", pos=19),
        )
    )


SELECTORS = [
    ("app=web", "kubernetes.labels.app=web"),
    ("app==web", "kubernetes.labels.app=web"),
    ("app!=web", "(NOT kubernetes.labels.app=web)"),
    ("app", "kubernetes.labels.app?"),
    ("!app", "(NOT kubernetes.labels.app?)"),
    ("app=web, tier!=db", "(AND kubernetes.labels.app=web (NOT kubernetes.labels.tier=db))"),
    ("app.kubernetes.io/name=shop", "kubernetes.labels.app_kubernetes_io/name=shop"),
]


@pytest.mark.parametrize(("selector", "model"), SELECTORS)
def test_label_selector(selector: str, model: str) -> None:
    assert describe(label_selector(selector)) == model


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("app=", "-l: empty label value (use 'key' to ask for the label to exist) at column 1"),
        ("app=web,,x=y", "-l: empty requirement in label selector 'app=web,,x=y' at column 9"),
        ("a b=c", "-l: bad label key 'a b' at column 1"),
        ('a"=c', "-l: bad label key 'a\"' at column 1"),
    ],
)
def test_label_selector_errors(selector: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        label_selector(selector)
    assert str(info.value) == message


def test_all_of_and_any_of_flatten() -> None:
    a, b, c = Text("a"), Text("b"), Text("c")
    assert all_of([]) == All()
    assert all_of([All(), a]) == a
    assert all_of([And((a, b)), c, All()]) == And((a, b, c))
    assert any_of([a, Or((b, c))]) == Or((a, b, c))
    assert any_of([a, All()]) == All()
    assert describe(Exists("kubernetes.labels.app")) == "kubernetes.labels.app?"
