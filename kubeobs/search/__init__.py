"""Log search: ``kubeobs logs``, one query language over two backends.

Modules, each with one job: :mod:`.query` (tokenizer, parser, the query model), :mod:`.timerange`
(durations and times), :mod:`.backend` (the request, the hits, the Backend protocol), :mod:`.es` and
:mod:`.sqlite` (a compiler from the model to Elasticsearch query DSL / to SQL + FTS5, and a backend that
runs it), :mod:`.render` (text, wide and JSON lines), :mod:`.histogram`, :mod:`.follow` and :mod:`.cli`.

Same query, same lines, on both backends — with these limits, which come from the two text analyzers
(Elasticsearch's ``standard`` analyzer on ``message``, SQLite FTS5's ``unicode61`` tokenizer) and cannot
be changed without changing how the collector indexes:

- Words joined by ``.``, ``:``, ``'`` or ``_`` (``10.244.1.7``, ``shop.example.com``, ``user_id``,
  ``don't``) are one word to Elasticsearch and several to SQLite. Searching the whole of it finds the same
  lines on both; searching a part of it (``244``, ``example``, ``user``) finds them on SQLite only.
- SQLite ignores accents: there ``cafe`` and ``café`` both find both spellings; on Elasticsearch each
  finds its own.
- A prefix (``time*``) must be letters and digits only, and is matched against lowercased words.
- Field values are exact and case-sensitive on both (``keyword`` / ``IS``); globs use ``*`` and ``?``.
- Elasticsearch indexes only documents it accepted: a line whose timestamp is not RFC 3339 is in its
  dead-letter index, not in the search; SQLite keeps such lines without a time, and search skips them.
"""
