"""Sinks: where records are delivered. A new sink is a new module plus one entry in ``_FACTORIES``."""

from __future__ import annotations

import importlib

from collector.config import ElasticsearchSink, SqliteSink
from collector.sinks.base import Sink

_FACTORIES = {
    "elasticsearch": "collector.sinks.elasticsearch",
    "sqlite": "collector.sinks.sqlite",
}


def build_sink(cfg: ElasticsearchSink | SqliteSink) -> Sink:
    module = importlib.import_module(_FACTORIES[cfg.type])
    sink: Sink = module.build(cfg)
    return sink
