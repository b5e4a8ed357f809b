"""The committed generated gRPC code is exactly what protoc makes of the .proto files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.utils import ROOT


def _codegen():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("codegen", ROOT / "scripts" / "codegen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    codegen = _codegen()
    generated = {path.name: path.read_text() for path in codegen.generate(tmp_path)}
    committed_dir = ROOT / "src" / "gitstafette" / "_proto"
    committed = {path.name: path.read_text() for path in committed_dir.glob("*_pb2*.py*")}
    assert sorted(generated) == sorted(committed)
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"run `python scripts/codegen.py`: {stale} differ from the .proto files"


def test_original_messages_keep_their_field_numbers() -> None:
    """Wire compatibility with the original project: the numbers of DESIGN.md's table."""
    from gitstafette._proto import gitstafette_pb2 as pb

    expected = {
        "WebhookEventsRequest": {"client_id": 1, "repository_id": 2, "last_received_event_id": 3, "duration_secs": 4},
        "WebhookEventsResponse": {"webhook_events": 1},
        "WebhookEvent": {"event_id": 1, "body": 2, "headers": 3},
        "Header": {"name": 1, "values": 2},
        "WebhookEventPushRequest": {"cliend_id": 1, "repository_id": 2, "webhook_event": 3},
        "WebhookEventPushResponse": {"response_code": 1, "response_description": 2, "accepted": 3},
        "WebhookEventStatusRequest": {"client_id": 1, "repository_id": 2},
        "WebhookEventStatusesRequest": {"client_id": 1},
        "WebhookEventStatusResponse": {"server_id": 1, "count": 2, "repository_id": 3, "status": 4},
    }
    for message, fields in expected.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in descriptor.fields} == fields, message
    service = pb.DESCRIPTOR.services_by_name["Gitstafette"]
    assert service.full_name == "gitstafette.v1.Gitstafette"
    methods = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods}
    assert methods["FetchWebhookEvents"] == ("WebhookEventsRequest", "WebhookEventsResponse", True)
    assert methods["WebhookEventPush"] == ("WebhookEventPushRequest", "WebhookEventPushResponse", False)
    assert methods["WebhookEventStatus"] == ("WebhookEventStatusRequest", "WebhookEventStatusResponse", False)
    assert methods["WebhookEventStatuses"] == ("WebhookEventStatusesRequest", "WebhookEventStatusResponse", True)
