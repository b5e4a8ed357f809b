"""The public side of the relay: webhook ingest over HTTP, event streaming over gRPC."""
