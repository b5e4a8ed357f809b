"""A stock grpcio client of the original contract, run as its own process by the tests.

Usage: stock_client.py GENERATED_DIR TARGET COMMAND [ARGS…]; prints one JSON document per line.
It imports only what grpcio-tools generated from tests/proto/original_gitstafette.proto.
"""

from __future__ import annotations

import base64
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
import original_gitstafette_pb2 as pb  # noqa: E402
import original_gitstafette_pb2_grpc as pb_grpc  # noqa: E402


def emit(document: object) -> None:
    print(json.dumps(document), flush=True)


def event_json(event: pb.WebhookEvent) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "body": base64.b64encode(event.body).decode(),
        "headers": [[h.name, h.values] for h in event.headers],
    }


def main() -> None:
    target, command, args = sys.argv[2], sys.argv[3], sys.argv[4:]
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.GitstafetteStub(channel)
        if command == "fetch":
            client_id, repository_id, want, after, duration = args[0], args[1], int(args[2]), int(args[3]), int(args[4])
            request = pb.WebhookEventsRequest(
                client_id=client_id, repository_id=repository_id, last_received_event_id=after, duration_secs=duration
            )
            call = stub.FetchWebhookEvents(request, timeout=60)
            received = 0
            for response in call:
                for event in response.webhook_events:
                    emit({"event": event_json(event)})
                    received += 1
                if received >= want:
                    call.cancel()
                    break
            emit({"done": received})
        elif command == "push":
            repository_id, event_id, body = args[0], args[1], args[2].encode()
            event = pb.WebhookEvent(
                event_id=event_id,
                body=body,
                headers=[
                    pb.Header(name="X-GitHub-Event", values="push"),
                    pb.Header(name="X-GitHub-Delivery", values=event_id),
                ],
            )
            answer = stub.WebhookEventPush(
                pb.WebhookEventPushRequest(cliend_id="stock", repository_id=repository_id, webhook_event=event)
            )
            emit({"response_code": answer.response_code, "accepted": answer.accepted})
        elif command == "status":
            answer = stub.WebhookEventStatus(pb.WebhookEventStatusRequest(client_id=args[0], repository_id=args[1]))
            emit({"server_id": answer.server_id, "count": answer.count, "repository_id": answer.repository_id})
        elif command == "statuses":
            for answer in stub.WebhookEventStatuses(pb.WebhookEventStatusesRequest(client_id=args[0])):
                emit({"count": answer.count, "repository_id": answer.repository_id, "status": answer.status})
        else:
            raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
