"""Fuzzing in CI (issue 8): a real `diffmesh serve` process (tiny models, loopback) gets
schemathesis requests generated from its own OpenAPI document for every operation, and
hypothesis-generated prompts (random graphs, wrong types, NaN/huge/unicode values, cycles,
dangling links) on /prompt. Property: no 5xx, the server stays up, and /queue, /history and
/object_info still answer 200 afterwards. Bounded and deterministic (derandomized); the numbers of
generated requests and prompts are printed to the terminal."""

from __future__ import annotations

import collections
import json
import time

import httpx
import pytest
import schemathesis
import testnodes
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from serverproc import ServerProcess

REQUESTS_PER_OPERATION = 12
PROMPTS = 300
FUZZ = settings(derandomize=True, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_server(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz") / "base"
    testnodes.install(base)
    with ServerProcess(base, "--models-dir", str(models_base / "models")) as proc:
        proc.wait_ready()
        with proc.client() as http:
            assert http.get("/api/object_info").status_code == 200      # the runtime is built
        yield proc


class Tally:
    """Requests and prompts sent, by status, printed to the terminal at the end of the module."""

    def __init__(self):
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def add(self, kind: str, status: int) -> None:
        self.counts[kind][status] += 1

    def lines(self) -> list[str]:
        return [f"fuzz: {sum(c.values())} generated {kind} in {self.seconds[kind]:.1f} s, by status "
                f"{dict(sorted(c.items()))}" for kind, c in self.counts.items()]


@pytest.fixture(scope="module")
def tally(request):
    record = Tally()
    yield record
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():        # into the CI log, whatever -q or -s say
        for line in record.lines():
            print("\n" + line, flush=True)


def _still_serving(server) -> None:
    assert server.proc.poll() is None, "the server process died"
    with server.client() as http:
        for route in ("/api/queue", "/api/history", "/api/object_info"):
            response = http.get(route)
            assert response.status_code == 200, (route, response.text[:300])


def _stop_work(server) -> None:
    """Drop what the fuzzers queued (prompts that validated, e.g. a long Sleep)."""
    with server.client() as http:
        http.post("/api/queue", json={"clear": True})
        http.post("/api/interrupt", json={})


# -- schemathesis: every operation of the OpenAPI document ---------------------------------------

@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(FUZZ, max_examples=REQUESTS_PER_OPERATION)
def test_every_operation_answers_generated_requests_without_a_5xx(case, fuzz_server, tally):
    started = time.monotonic()
    response = case.call(base_url=fuzz_server.url, timeout=60)
    tally.seconds["requests"] += time.monotonic() - started
    tally.add("requests", response.status_code)
    assert response.status_code < 500, (case.method, case.formatted_path, case.query, case.body,
                                         response.text[:500])


def test_schema_describes_request_bodies_of_the_state_changing_routes(fuzz_server):
    with fuzz_server.client() as http:
        document = http.get("/openapi.json").json()
    prompt = document["paths"]["/api/prompt"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert prompt == {"$ref": "#/components/schemas/PromptRequest"}
    assert set(document["components"]["schemas"]["PromptRequest"]["required"]) == {"prompt"}
    upload = document["paths"]["/api/upload/image"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert any(p["name"] == "filename" and p["required"] for p in document["paths"]["/api/view"]["get"]["parameters"])
    empty = [f"{method} {path}" for path, item in document["paths"].items() for method, op in item.items()
             if method in ("post", "put", "patch") and "requestBody" not in op
             and not path.endswith(("/cancel", "/move/{dest}"))]
    assert empty == []


def test_server_still_serves_after_the_schema_fuzzing(fuzz_server):
    _still_serving(fuzz_server)
    _stop_work(fuzz_server)


# -- hypothesis: prompts ----------------------------------------------------------------------

CLASSES = ["Sleep", "Sleep", "Sleep", "Fail", "EmptyLatentImage", "VAEDecode", "KSampler", "SaveImage", "NoSuchNode", "", "猫"]
NODE_IDS = ["1", "2", "3", "10", "a", "-1", "猫", " "]
INPUT_NAMES = ["seconds", "preview_size", "width", "height", "batch_size", "samples", "vae", "seed", "",
               "images", "filename_prefix", "😀"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-5, 70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.text(max_size=20), st.sampled_from(["", "\x00", "../../etc/passwd", "😀" * 5, "a" * 300]))
links = st.one_of(
    st.tuples(st.sampled_from(NODE_IDS), st.integers(-1, 3)).map(list),      # dangling, cycles, bad slots
    st.lists(scalars, max_size=4))                                            # not a link at all
values = st.one_of(scalars, links, st.dictionaries(st.text(max_size=5), scalars, max_size=3))
inputs = st.dictionaries(st.sampled_from(INPUT_NAMES), values, max_size=5)
nodes = st.fixed_dictionaries(
    {"class_type": st.sampled_from(CLASSES)},
    optional={"inputs": inputs})
odd_nodes = st.fixed_dictionaries({"class_type": st.one_of(st.sampled_from(CLASSES), scalars)},
                                  optional={"inputs": st.one_of(inputs, values)})
# Mostly graphs of real node classes (so validation, links and cycles are exercised), some garbage.
graphs = st.dictionaries(st.sampled_from(NODE_IDS), nodes, min_size=1, max_size=5)
prompts = st.one_of(graphs, graphs, graphs, st.dictionaries(st.sampled_from(NODE_IDS), st.one_of(odd_nodes, values),
                                                            max_size=5), values)
clean_bodies = st.fixed_dictionaries(
    {"prompt": graphs}, optional={"client_id": st.text(max_size=10),
                                  "extra_data": st.dictionaries(st.text(max_size=8), values, max_size=3)})
wild_bodies = st.fixed_dictionaries(
    {"prompt": prompts},
    optional={"client_id": st.one_of(st.text(max_size=10), scalars), "extra_data": st.one_of(
        st.dictionaries(st.text(max_size=8), values, max_size=3), values),
        "number": scalars, "front": scalars, "partial_execution_targets": st.one_of(st.lists(scalars, max_size=3),
                                                                                     scalars)})
bodies = st.one_of(clean_bodies, clean_bodies, wild_bodies)   # graphs in a valid envelope reach validation


def test_generated_prompts_get_4xx_or_are_queued_never_a_5xx(fuzz_server, tally):
    with fuzz_server.client(timeout=60) as http:
        @given(body=bodies)
        @settings(FUZZ, max_examples=PROMPTS)
        def post(body):
            text = json.dumps(body, allow_nan=True)          # NaN and Infinity go out as literals
            started = time.monotonic()
            try:
                response = http.post("/api/prompt", content=text.encode(), headers={"Content-Type": "application/json"})
            except httpx.TransportError as exc:
                pytest.fail(f"the server stopped answering: {exc} (body {text[:300]})")
            tally.seconds["prompts"] += time.monotonic() - started
            tally.add("prompts", response.status_code)
            assert response.status_code < 500, (text[:500], response.text[:500])
            if response.status_code == 400:
                assert set(response.json()) >= {"error"}

        post()
    assert sum(tally.counts["prompts"].values()) >= PROMPTS
    _still_serving(fuzz_server)
    _stop_work(fuzz_server)
    _still_serving(fuzz_server)
