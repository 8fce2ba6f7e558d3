"""The model pool in process: names, the models file, estimates against what loaded models hold, eviction
order, too_large, placement on several devices and the scheduler's use of it (fake engines where only the
bookkeeping is tested; the tiny MusicGen test model where the estimate is)."""

import pytest

from stemd.daemon.scheduler import Job, Scheduler
from stemd.models.base import Engine
from stemd.models.memory import Footprint, footprint, weight_bytes
from stemd.models.entries import ModelEntry, ModelsFileError, derive_name, parse_model_arg, read_models_file
from stemd.models.pool import ModelPool, Slot, locate
from stemd.protocol import GenerateRequest, ProtocolError

MIB = 2 ** 20


def test_model_names_from_the_command_line_and_a_models_file(tmp_path):
    assert parse_model_arg("facebook/musicgen-small") == ModelEntry("musicgen-small", "facebook/musicgen-small")
    assert parse_model_arg("drums=/models/my drums") == ModelEntry("drums", "/models/my drums")
    assert parse_model_arg("click").name == "click"
    folder = tmp_path / "a=b"          # a folder whose name has '=' is a source, not NAME=SOURCE
    folder.mkdir()
    assert parse_model_arg(str(folder)) == ModelEntry("a-b", str(folder))
    assert derive_name("ACE-Step/Ace-Step1.5") == "Ace-Step1.5"
    with pytest.raises(ModelsFileError, match="model name"):
        parse_model_arg("bad name=click")
    models = tmp_path / "models.toml"
    models.write_text('[models]\ndrums = "/m/drums"\nloops = { source = "click", device = "cuda:1", dtype = "bf16" }\n')
    assert read_models_file(models) == [ModelEntry("drums", "/m/drums"),
                                        ModelEntry("loops", "click", "cuda:1", "bf16")]
    for text, message in [('[models]\nx = { source = "click", size = 3 }', "unknown keys size"),
                          ("[nothing]\n", "needs a \\[models\\] table"), ("[models\n", "models.toml")]:
        models.write_text(text)
        with pytest.raises(ModelsFileError, match=message):
            read_models_file(models)


def test_the_estimate_of_weights_is_what_a_loaded_model_holds(engine, tiny):
    family, folder = locate(str(tiny))
    fp = footprint(family, folder, "float32")                   # the engine fixture runs float32
    held = engine.device_bytes()
    assert family == "musicgen" and 0.97 * held <= fp.weights <= 1.03 * held
    assert weight_bytes(folder, 2) == pytest.approx(weight_bytes(folder) / 2, rel=0.01)  # bfloat16 halves the floats
    # per request: grows with variations, and a take longer than MusicGen's 30 s window costs no more cache
    assert fp.request(10, 4) > 3 * fp.request(10, 1)
    assert fp.request(600, 1) == fp.request(40, 1) > fp.request(10, 1)


def test_the_pool_plans_the_default_backend_and_the_memory_each_cpu_backend_holds(tiny, tmp_path, monkeypatch):
    from stemd.models.musicgen.engine import MusicGenEngine
    from stemd.models.backend_plan import planned_backend, planned_dtype

    monkeypatch.delenv("STEMD_DECODE_BACKEND")          # conftest's eager: plan the default
    assert planned_backend("musicgen", "cpu", None) == "onnx-int8"
    assert planned_backend("musicgen", "cuda:0", None) == "cuda-graph"
    assert planned_backend("musicgen", "cpu", None, "bfloat16") == "eager"    # auto with bf16 runs eager
    assert planned_backend("musicgen", "cpu", "int8") == "int8" and planned_backend("click", "cpu", None) is None
    monkeypatch.setenv("STEMD_CACHE", str(tmp_path))    # onnx-int8 exports the test model's step here
    family, folder = locate(str(tiny))
    plain = footprint(family, folder, "float32")
    for backend in ("int8", "onnx-int8"):
        assert planned_dtype(family, "cpu", None, backend) == "float32"       # both load float32 first
        fp = footprint(family, folder, "float32", backend)
        held = MusicGenEngine.load(str(tiny), device="cpu", backend=backend).device_bytes()
        assert 0.9 * held <= fp.weights <= 1.1 * held, (backend, fp.weights, held)
        # int8 holds the language model in a quarter of float32; onnx-int8 holds an int8 copy beside it
        assert (fp.weights < plain.weights) == (backend == "int8")


class FakeEngine(Engine):
    def __init__(self, name: str, size: int):
        self.name, self.size, self.resets = name, size, 0

    def stream(self, spec, **kw):
        raise NotImplementedError

    def device_bytes(self) -> int:
        return self.size

    def reset(self) -> None:
        self.resets += 1


def fake_pool(sizes: dict, devices=("cpu",), budget=100 * MIB, pinned=None, working=0):
    """Models of ``sizes`` bytes whose requests need ``working`` bytes (a click-family estimate + a constant)."""
    loaded = []

    def loader(entry, device):
        loaded.append((entry.name, device))
        return FakeEngine(entry.name, sizes[entry.name])

    class Working(Footprint):
        def request(self, seconds, variations):
            return working * variations

    slots = [Slot(ModelEntry(n, n, (pinned or {}).get(n)), "click", None, Working("click", size)) for n, size in
             sizes.items()]
    return ModelPool([], list(devices), {d: budget for d in devices}, loader=loader, slots=slots), loaded


def test_the_least_recently_used_model_is_evicted_and_reloads_on_its_next_request(caplog):
    pool, loaded = fake_pool({"a": 40 * MIB, "b": 40 * MIB, "c": 40 * MIB}, working=10 * MIB)
    caplog.set_level("INFO", logger="stemd.models.pool")
    for name in ("a", "b", "a", "c", "a", "b"):
        pool.acquire(name, "cpu", 4.0, 1)
    # a, b fit together (80 + 10); c needs room: b (used before a) goes; then b needs room: c goes
    assert loaded == [("a", "cpu"), ("b", "cpu"), ("c", "cpu"), ("b", "cpu")]
    assert [s.name for s in pool.slots.values() if s.loaded] == ["a", "b"]
    evictions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evicted")]
    assert len(evictions) == 2 and evictions[0].startswith("evicted model b from cpu (least recently used")
    assert "model c needs" in evictions[0] and "40.0 MiB freed" in evictions[0]
    # working memory counts too: a request that needs 50 MiB beside a (40) evicts b
    pool.acquire("a", "cpu", 4.0, 5)
    assert [s.name for s in pool.slots.values() if s.loaded] == ["a"]


def test_too_large_names_the_figures_and_how_many_variations_fit():
    pool, _ = fake_pool({"a": 40 * MIB}, working=20 * MIB)
    assert pool.check("a", 8.0, 3).name == "a"                   # 40 + 60 = 100: fits exactly
    with pytest.raises(ProtocolError) as e:
        pool.check("a", 8.0, 4, "r")
    assert e.value.code == "too_large" and e.value.request_id == "r"
    assert "needs about 120.0 MiB" in e.value.message and "at most 3 variations" in e.value.message
    with pytest.raises(ProtocolError) as e:
        pool.check("nope", 8.0, 1, "r")
    assert e.value.code == "unknown_model" and e.value.message == "nope: models here are a"


def test_out_of_memory_recovery_resets_the_engine():
    pool, _ = fake_pool({"a": 10 * MIB})
    engine = pool.acquire("a", "cpu", 1.0, 1)
    pool.recover("a", "cpu")
    assert engine.resets == 1 and pool.slot("a").loaded


def test_placement_on_two_devices_follows_pins_loads_and_room():
    pool, loaded = fake_pool({"a": 40 * MIB, "b": 40 * MIB, "big": 150 * MIB, "p": 10 * MIB},
                             devices=("cpu:0", "cpu:1"), pinned={"p": "cpu:1"})
    pool.budgets["cpu:1"] = 200 * MIB
    assert not pool.allows("cpu:0", "p") and pool.allows("cpu:1", "p")         # pinned
    assert not pool.allows("cpu:0", "big") and pool.claim("cpu:1", "big")     # only cpu:1 has room
    assert pool.claim("cpu:0", "a") and not pool.claim("cpu:1", "a")          # a's home is cpu:0 now
    pool.acquire("a", "cpu:0", 1.0, 1)
    assert loaded == [("a", "cpu:0")] and not pool.allows("cpu:1", "a")
    pool.evict(pool.slot("a"), "test")                                         # evicted: any device again
    assert pool.allows("cpu:1", "a")
    with pytest.raises(ModelsFileError, match="pinned to cuda:3"):
        ModelPool([], ["cpu"], {"cpu": MIB}, slots=[Slot(ModelEntry("x", "click", "cuda:3"), "click", None,
                                                         Footprint("click", 0))])


class Client:
    def __init__(self, key):
        self.key = self.name = key


def test_the_scheduler_gives_each_device_the_jobs_it_may_run_in_turn():
    pool, _ = fake_pool({"a": 40 * MIB, "b": 40 * MIB}, devices=("cpu:0", "cpu:1"))
    s = Scheduler(16, devices=("cpu:0", "cpu:1"),
                  allows=lambda d, job, claim: pool.claim(d, job.model) if claim else pool.allows(d, job.model))
    x, y = Client("x"), Client("y")

    def job(client, rid, model, priority="live"):
        j = Job(GenerateRequest(rid, priority=priority, model=model), client, model=model)
        s.submit(j)
        return j

    job(x, "x-a1", "a"), job(x, "x-b1", "b"), job(y, "y-a1", "a"), job(x, "x-a2", "a")
    first = s.next_job(timeout=0, device="cpu:0")
    assert first.id == "x-a1" and pool.slot("a").device == "cpu:0"
    # cpu:1 may not run a's jobs now: it takes x's next job it may run, b's
    second = s.next_job(timeout=0, device="cpu:1")
    assert second.id == "x-b1" and s.next_job(timeout=0, device="cpu:1") is None
    s.finished(first)
    assert s.next_job(timeout=0, device="cpu:0").id == "y-a1"                # y's turn, across models
    # both devices busy, b's home is cpu:1 running an offline job: a live b job preempts it there only
    s.finished(second)
    off = job(y, "y-off", "b", "offline")
    assert s.next_job(timeout=0, device="cpu:1") is off
    job(x, "x-b2", "b")
    assert off.preempt
