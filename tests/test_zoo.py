import threading

import pytest
import torch
import torch.nn as nn

from companion import zoo


def _build():
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _trainer(calls):
    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.add_(1.0)
    return train


def test_cached_trains_once_then_loads(tmp_path):
    calls = []
    data = torch.arange(6.0)
    a = zoo.cached("toy", {"steps": 1}, _build, _trainer(calls), (data,), directory=tmp_path)
    b = zoo.cached("toy", {"steps": 1}, _build, _trainer(calls), (data,), directory=tmp_path)
    assert len(calls) == 1
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(a.weight, _build().weight + 1.0)  # loaded weights are the trained ones
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_key_changes_with_config_and_data(tmp_path):
    calls = []
    zoo.cached("toy", {"steps": 1}, _build, _trainer(calls), (torch.zeros(3),), directory=tmp_path)
    zoo.cached("toy", {"steps": 2}, _build, _trainer(calls), (torch.zeros(3),), directory=tmp_path)
    zoo.cached("toy", {"steps": 2}, _build, _trainer(calls), (torch.ones(3),), directory=tmp_path)
    assert len(calls) == 3
    assert len(list(tmp_path.glob("toy-*.pt"))) == 3


def test_parallel_workers_train_once(tmp_path):
    calls = []
    out = []
    threads = [threading.Thread(target=lambda: out.append(
        zoo.cached("toy", {}, _build, _trainer(calls), directory=tmp_path))) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1 and len(out) == 3


def test_bad_name(tmp_path):
    with pytest.raises(ValueError, match="alphanumeric"):
        zoo.cached("../x", {}, _build, _trainer([]), directory=tmp_path)


def test_ema_update():
    t, s = nn.Linear(2, 2), nn.Linear(2, 2)
    before = t.weight.clone()
    zoo.ema_update(t, s, 0.9)
    assert torch.allclose(t.weight, 0.9 * before + 0.1 * s.weight)
    zoo.ema_update(t, s, 0.0)
    assert torch.equal(t.weight, s.weight)
    with pytest.raises(ValueError):
        zoo.ema_update(t, s, 1.5)


def test_standard_teachers_are_cached_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    from companion.data import make_shapes

    data = make_shapes(64, size=16, seed=0)
    kw = dict(image_size=16, patch_size=4, dim=16, depth=1, heads=2)
    a = zoo.supervised_vit(data.images, data.labels, steps=3, batch_size=8, device="cpu", **kw)
    b = zoo.supervised_vit(data.images, data.labels, steps=3, batch_size=8, device="cpu", **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    m = zoo.mae(data.images, steps=2, batch_size=8, device="cpu", decoder_dim=16, decoder_depth=1, **kw)
    assert m.cfg.dim == 16
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # a fresh cache trains the same weights again (deterministic)
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "other"))
    c = zoo.supervised_vit(data.images, data.labels, steps=3, batch_size=8, device="cpu", **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


_WORKER = """
import sys, time, torch, torch.nn as nn
from companion import zoo

def train(model):
    with open(sys.argv[1], "a") as f:
        f.write("trained\\n")
    time.sleep(1.0)  # long enough for the other worker to arrive while this one trains
    with torch.no_grad():
        model.weight.add_(1.0)

zoo.register("toy")(lambda: zoo.cached("toy", {"steps": 1}, lambda: nn.Linear(3, 2), train))
print(zoo.build(["toy"])["toy"] >= 0)
"""


def test_zoo_builds_once_under_two_parallel_processes(tmp_path):
    import os
    import subprocess
    import sys

    log = tmp_path / "trained.log"
    env = {**os.environ, "COMPANION_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all(o.strip() == "True" for o in outs)
    assert log.read_text().count("trained") == 1
    assert len(list((tmp_path / "cache").glob("toy-*.pt"))) == 1


def test_unknown_zoo_name_is_one_line():
    with pytest.raises(KeyError, match="unknown zoo model 'nope'"):
        zoo.build(["nope"])


def test_mim_zoo_loads_bit_identical_to_a_fresh_build(tmp_path, monkeypatch):
    """The MIM zoo (MAE → SimMIM continuation, supervised ViT) on a tiny recipe: a second call loads the cached
    weights, and a build in an empty cache trains exactly the same weights."""
    recipe = dict(zoo.MIM_RECIPE, corpus=64, mae_steps=2, simmim_steps=2, vit_steps=2, batch_size=8)
    monkeypatch.setattr(zoo, "MIM_RECIPE", recipe)
    monkeypatch.setattr(zoo, "MIM_ARCH", dict(zoo.MIM_ARCH, dim=16, depth=1, heads=2))
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "a"))
    first = [zoo.mim_mae("cpu"), zoo.mim_simmim("cpu")]
    again = [zoo.mim_mae("cpu"), zoo.mim_simmim("cpu")]
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "b"))
    fresh = [zoo.mim_mae("cpu"), zoo.mim_simmim("cpu")]
    for a, b, c in zip(first, again, fresh):
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) and torch.equal(sa[k], sc[k]) for k in sa)
    assert first[1].cfg.mode == "simmim" and not any(p.requires_grad for p in first[1].parameters())
    trainable = zoo.unfrozen(first[0])
    assert all(p.requires_grad for p in trainable.parameters()) and trainable.training


def test_named_entries_cover_the_mim_zoo():
    assert {"mim.mae", "mim.simmim", "mim.vit"} <= set(zoo.names())


def test_build_order_puts_continuations_after_what_they_continue_from():
    order = zoo.build_order(zoo.names())
    assert set(order) == set(zoo.names())
    for name, deps in zoo.AFTER.items():
        assert all(order.index(d) < order.index(name) for d in deps)
    continuations = {name for name, deps in zoo.AFTER.items() if deps}
    assert {"mim.simmim", "toy_sd"} <= continuations
    roots = {dep for deps in zoo.AFTER.values() for dep in deps}
    assert set(order[:len(roots)]) == roots  # chains start first, so their continuations are not handed out last
    assert order.index("toy_sd") < order.index("shapes_featnet")


def test_parallel_build_hands_out_a_continuation_only_after_what_it_continues_from(monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(zoo, "AFTER", {"a": (), "a2": ("a",), "b": (), "c": ()})
    events, lock = [], threading.Lock()

    def worker(name):
        with lock:
            events.append(("start", name))
        time.sleep({"a": 0.05}.get(name, 0.01))
        with lock:
            events.append(("end", name))
        return 1.0

    reported = []
    seconds = zoo.build_parallel(["a", "a2", "b", "c"], 2, report=lambda n, s: reported.append(n),
                                 executor=ThreadPoolExecutor(2), worker=worker)
    assert seconds == {"a": 1.0, "a2": 1.0, "b": 1.0, "c": 1.0} and sorted(reported) == ["a", "a2", "b", "c"]
    assert events.index(("start", "a2")) > events.index(("end", "a"))
    assert events[0] == ("start", "a")  # the chain's root first
