"""Offline preparation: corpus -> tokenizer -> token shards per work unit -> split indexes + manifest
(`prepare.prepare`; docs/data.md). Nothing here is imported by the training or evaluation pipelines."""
