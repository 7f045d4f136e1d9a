"""Stores behind the lifecycle RPCs: records, names, in-flight creations, events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cri_shim.api import api_pb2 as pb
from cri_shim.errors import AlreadyExists, ResourceExhausted
from cri_shim.services.events import QUEUE_LIMIT, EventBroadcaster
from cri_shim.store import container as cstore
from cri_shim.store import sandbox as sstore
from cri_shim.store.db import MetadataStore
from cri_shim.store.inflight import InflightCreations
from cri_shim.store.names import NameRegistry
from cri_shim.store.records import RecordStore, labels_match
from cri_shim.types import ContainerId, ImageId, SandboxId


def pod_config(name: str = "web") -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, namespace="ns", uid="u1", attempt=1),
                               labels={"app": "web"}, annotations={"a": "\u00e9\u4e2d"})


def test_sandbox_records_persist_and_reload(tmp_path: Path) -> None:
    db = MetadataStore.open(tmp_path / "meta.db")
    store = RecordStore(db, sstore.TABLE, sstore.Sandbox.from_row)
    sb = sstore.Sandbox(id=SandboxId("a" * 64), name=sstore.sandbox_name(pod_config().metadata),
                        config=pod_config(), handler="", created_at=123)
    store.add(sb)
    store.put(sb.with_(state=sstore.SandboxState.READY, ips=("10.0.0.2",)))
    again = RecordStore(db, sstore.TABLE, sstore.Sandbox.from_row)
    (loaded,) = again.load()
    assert loaded.state is sstore.SandboxState.READY and loaded.ips == ("10.0.0.2",)
    assert loaded.config == pod_config()  # annotations byte for byte
    assert again.find("aaaa") is loaded and again.find("b") is None
    again.delete(loaded.id)
    assert RecordStore(db, sstore.TABLE, sstore.Sandbox.from_row).load() == []


def test_container_records_round_trip(tmp_path: Path) -> None:
    db = MetadataStore.open(tmp_path / "meta.db")
    store = RecordStore(db, cstore.TABLE, cstore.Container.from_row)
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c", attempt=2),
                                envs=[pb.KeyValue(key="K", value=b"\xff\x00bin")])
    c = cstore.Container(id=ContainerId("c" * 64), sandbox_id=SandboxId("a" * 64),
                         name=cstore.container_name("a" * 64, config.metadata), config=config,
                         image_id=ImageId("sha256:" + "1" * 64), image_name="busybox", image_ref="sha256:" + "1" * 64,
                         created_at=1, user={"uid": 0, "gid": 0, "groups": [10]})
    store.add(c)
    (loaded,) = RecordStore(db, cstore.TABLE, cstore.Container.from_row).load()
    assert loaded == c


def test_name_registry_names_the_holder() -> None:
    names = NameRegistry("sandbox")
    names.reserve("n", "id1")
    names.reserve("n", "id1")  # the holder may re-reserve
    with pytest.raises(AlreadyExists, match="reserved by sandbox id1"):
        names.reserve("n", "id2")
    names.release("n", "id2")  # not the holder: no effect
    assert names.holder("n") == "id1"
    names.release("n")
    names.reserve("n", "id2")


def test_label_selector_is_exact_and_anded() -> None:
    assert labels_match({"a": "1", "b": "2"}, {"a": "1"})
    assert not labels_match({"a": "1"}, {"a": "1", "b": "2"})
    assert not labels_match({"a": "1"}, {"a": "10"})


def test_retry_takes_over_a_creation_whose_caller_timed_out() -> None:
    async def main() -> None:
        inflight = InflightCreations("sandbox", claim_timeout=5)
        calls, cleaned = [], []
        release = asyncio.Event()

        async def create() -> str:
            calls.append(1)
            await release.wait()
            return "id-1"

        async def cleanup(object_id: str) -> None:
            cleaned.append(object_id)

        first = asyncio.create_task(inflight.run("n", create, cleanup))
        await asyncio.sleep(0.01)
        first.cancel()  # kubelet's deadline
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        assert await inflight.run("n", create, cleanup) == "id-1"  # the retry gets the same object
        assert calls == [1] and cleaned == [] and not inflight.pending("n")

    asyncio.run(main())


def test_unclaimed_creation_is_cleaned_up() -> None:
    async def main() -> None:
        inflight = InflightCreations("container", claim_timeout=0.05)
        cleaned: list[str] = []

        async def create() -> str:
            await asyncio.sleep(0.02)
            return "id-2"

        async def cleanup(object_id: str) -> None:
            cleaned.append(object_id)

        task = asyncio.create_task(inflight.run("n", create, cleanup))
        await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.sleep(0.2)
        assert cleaned == ["id-2"] and not inflight.pending("n")

    asyncio.run(main())


def test_slow_event_subscriber_is_disconnected() -> None:
    async def main() -> None:
        events = EventBroadcaster()
        stream = events.subscribe()
        first = asyncio.create_task(stream.__anext__())
        await asyncio.sleep(0)
        for i in range(QUEUE_LIMIT + 2):
            events.publish(pb.ContainerEventResponse(container_id=str(i)))
        assert (await first).container_id == "0"
        with pytest.raises(ResourceExhausted):
            for _ in range(QUEUE_LIMIT + 2):
                await stream.__anext__()
        assert events.subscriber_count == 0

    asyncio.run(main())


def test_undo_stack_reverses_and_survives_a_failing_step() -> None:
    from cri_shim.services.undo import UndoStack

    done: list[str] = []

    async def main() -> None:
        with pytest.raises(RuntimeError, match="step 3"):
            async with UndoStack("test") as undo:
                undo.push("one", lambda: done.append("1"))

                async def two() -> None:
                    raise OSError("undo of two fails")

                undo.push("two", two)
                undo.push("three", lambda: done.append("3"))
                raise RuntimeError("step 3 failed")
        async with UndoStack("ok") as undo:
            undo.push("never", lambda: done.append("never"))
            undo.commit()

    asyncio.run(main())
    assert done == ["3", "1"]
