"""The SQLite queue store on a real file: order, exactly-once completion, recovery after a crash."""

from __future__ import annotations

import threading

import pytest
from diffmesh.server.store import DuplicatePromptId, QueueStore, history_entry


def _entry(item):
    return history_entry(item, "success", True, [], {}, {})


def test_dequeue_follows_number_then_id_and_front_goes_first(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    assert store.enqueue("b", {}, {}, ["1"]) == 0
    assert store.enqueue("a", {}, {}, ["1"]) == 1
    assert store.enqueue("f", {}, {}, ["1"], front=True) == -2
    assert store.enqueue("x", {}, {}, ["1"], number=1) == 1
    assert [store.dequeue().prompt_id for _ in range(4)] == ["f", "b", "a", "x"]
    assert store.dequeue() is None


def test_a_prompt_finishes_once_and_duplicates_are_refused(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    store.enqueue("p", {"1": {}}, {"client_id": "c"}, ["1"], sensitive={"api_key_comfy_org": "k"})
    item = store.dequeue()
    assert item.as_wire() == [0, "p", {"1": {}}, {"client_id": "c"}, ["1"]]
    assert store.finish("p", _entry(item)) is True
    assert store.finish("p", _entry(item)) is False
    with pytest.raises(DuplicatePromptId):
        store.enqueue("p", {}, {}, [])
    assert list(store.history()) == ["p"] and "k" not in str(store.history())


def test_running_prompts_of_a_dead_server_run_again_and_numbers_keep_growing(tmp_path):
    path = tmp_path / "q.sqlite3"
    store = QueueStore(path)
    for pid in "abc":
        store.enqueue(pid, {}, {}, [])
    store.dequeue()  # "a" was running when the server died
    store.close()
    again = QueueStore(path)
    assert again.recover() == 1
    assert [again.dequeue().prompt_id for _ in range(3)] == ["a", "b", "c"]
    assert again.enqueue("d", {}, {}, []) == 3


def test_several_running_prompts_of_a_dead_server_all_run_again_in_order_once(tmp_path):
    path = tmp_path / "q.sqlite3"
    store = QueueStore(path)
    for pid in "abcd":
        store.enqueue(pid, {}, {}, [])
    running = [store.dequeue(), store.dequeue()]          # two workers ran "a" and "b" at once
    assert [i.prompt_id for i in store.items("running")] == ["a", "b"] and store.pending_count() == 2
    assert store.finish("b", _entry(running[1]))          # "b" finished; "a" was cut off by the crash
    store.close()
    again = QueueStore(path)
    assert again.recover() == 1 and again.pending_count() == 3
    assert [again.dequeue().prompt_id for _ in range(3)] == ["a", "c", "d"]
    assert again.finish("b", _entry(running[1])) is False  # never twice


def test_concurrent_workers_never_take_the_same_prompt(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    for i in range(200):
        store.enqueue(f"p{i:03d}", {}, {}, [])
    taken: list[str] = []

    def worker():
        while (item := store.dequeue()) is not None:
            taken.append(item.prompt_id)
            assert store.finish(item.prompt_id, _entry(item))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [f"p{i:03d}" for i in range(200)] and store.history_count() == 200


def test_history_last_items_and_offsets(tmp_path):
    store = QueueStore(tmp_path / "q.sqlite3")
    for pid in "abcd":
        store.enqueue(pid, {}, {}, [])
        store.finish(pid, _entry(store.dequeue()))
    assert list(store.history(max_items=2)) == ["c", "d"]
    assert list(store.history(max_items=2, offset=1)) == ["b", "c"]
    assert store.delete_history(["b"]) == 1 and list(store.history()) == ["a", "c", "d"]
