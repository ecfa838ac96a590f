"""Node instance state under `--cache-lru N` is pruned with the outputs: a node's state lives while
an output of that node is cached, so a server that sees many different prompts keeps at most
about N states instead of one per node id it ever ran."""

from __future__ import annotations

from diffmesh.graph.cache import CacheEntry, ExecutionCache


def _run(cache: ExecutionCache, node_id: str, signature: tuple, value: int) -> dict:
    """One prompt of one node: it writes `value` into its state and stores an output. Returns the
    state it found at its start (a copy)."""
    prompt = {node_id: {"class_type": "Counter", "inputs": {}}}
    session = cache.begin_prompt(prompt, {node_id: signature})
    state = session.state(node_id, "Counter")
    found = dict(state)
    state["value"] = value
    session.set(node_id, CacheEntry([[value]], None))
    session.close()
    return found


def test_lru_keeps_node_states_only_while_their_outputs_are_cached():
    cache = ExecutionCache("lru", size=3)
    for i in range(50):                                  # 50 prompts, each with a new node id
        _run(cache, f"n{i}", ("sig", i), i)
    assert len(cache) == 3 and cache.state_count() <= 3
    assert _run(cache, "n49", ("sig", 49), 0) == {"value": 49}     # a cached node keeps its state
    assert _run(cache, "n0", ("sig", 0), 0) == {}                  # an evicted one starts afresh


def test_a_state_a_running_prompt_holds_is_not_pruned_under_it():
    cache = ExecutionCache("lru", size=1)
    running = cache.begin_prompt({"a": {"class_type": "Counter", "inputs": {}}}, {"a": ("sig", "a")})
    running.state("a", "Counter")["value"] = 7
    for i in range(5):                                   # other prompts evict everything meanwhile
        _run(cache, f"n{i}", ("sig", i), i)
    assert running.state("a", "Counter") == {"value": 7}
    running.close()


def test_classic_policy_still_keeps_only_the_current_prompts_states():
    cache = ExecutionCache("classic")
    for i in range(10):
        _run(cache, f"n{i}", ("sig", i), i)
    assert cache.state_count() == 1
