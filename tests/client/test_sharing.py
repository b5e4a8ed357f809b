"""Several clients: different ids each get every event; the same id shares the repositories."""

from __future__ import annotations

import httpx

from tests.client.utils import (
    RecordingTarget,
    duplicates,
    post_many,
    post_webhook,
    repository_of,
    running_client,
    wait_until,
)
from tests.utils import ServerProcess


def test_clients_with_different_ids_each_get_every_event(server: ServerProcess) -> None:
    repository = repository_of()
    with (
        RecordingTarget() as first_target,
        RecordingTarget() as second_target,
        running_client(server, [repository], first_target.url, "team-a"),
        running_client(server, [repository], second_target.url, "team-b"),
        httpx.Client() as http,
    ):
        sent = [post_webhook(http, server) for _ in range(10)]
        wait_until(
            lambda: len(first_target.delivered()) >= 10 and len(second_target.delivered()) >= 10,
            message="both targets to have every event",
        )
    assert first_target.delivered_ids() == sent
    assert second_target.delivered_ids() == sent


def test_clients_with_the_same_id_get_each_event_once_in_total(server: ServerProcess) -> None:
    repositories = ["9100001", "9100002", "9100003", "9100004"]
    with (
        RecordingTarget() as first_target,
        RecordingTarget() as second_target,
        running_client(server, repositories, first_target.url, "replicas") as first,
        running_client(server, repositories, second_target.url, "replicas") as second,
        httpx.Client() as http,
    ):

        def split() -> tuple[set[str], set[str]] | None:
            # While a repository moves from the first to the second, both may list it for a moment (the
            # first hears of the move a little later): wait for the split to settle, disjoint.
            served = set(first.health()["repositories"]), set(second.health()["repositories"])
            shared = all(served) and not served[0] & served[1] and served[0] | served[1] == set(repositories)
            return served if shared else None

        first_served, second_served = wait_until(split, message="the repositories split between both, disjoint")
        sent = {repository: post_many(http, server, 10, repository, threads=2) for repository in repositories}
        total = sum(len(ids) for ids in sent.values())
        wait_until(
            lambda: len(first_target.delivered()) + len(second_target.delivered()) >= total,
            message="every event at one of the targets",
        )

    for target, served in ((first_target, first_served), (second_target, second_served)):
        got = target.delivered()
        assert {r.header("X-GitHub-Hook-Installation-Target-ID") for r in got} == served
        for repository in served:
            in_order = [r.delivery_id for r in got if r.header("X-GitHub-Hook-Installation-Target-ID") == repository]
            assert in_order == sent[repository]
    everything = first_target.delivered_ids() + second_target.delivered_ids()
    assert duplicates(everything) == {}
    assert sorted(everything) == sorted(i for ids in sent.values() for i in ids)


def test_when_a_replica_leaves_the_other_takes_its_repositories_over(server: ServerProcess) -> None:
    repositories = ["9200001", "9200002"]
    with (
        RecordingTarget() as first_target,
        RecordingTarget() as second_target,
        running_client(server, repositories, first_target.url, "pair") as first,
        running_client(server, repositories, second_target.url, "pair") as second,
        httpx.Client() as http,
    ):
        wait_until(lambda: first.health()["repositories"] and second.health()["repositories"], message="a split")
        assert first.stop() == 0
        wait_until(lambda: sorted(second.health()["repositories"]) == repositories, message="the takeover")
        sent = [post_webhook(http, server, repository_id=repository) for repository in repositories]
        wait_until(lambda: len(second_target.delivered()) >= 2, message="delivery by the remaining replica")
    assert sorted(second_target.delivered_ids()) == sorted(sent)
    assert first_target.delivered_ids() == []
