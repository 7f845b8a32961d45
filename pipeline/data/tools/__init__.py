"""Dataset tools behind CLI commands: pack media into shards, the demo dataset, inspect, plots. May use
``stages`` and ``shards``; never Ray."""
