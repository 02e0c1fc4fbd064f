"""Races on lists and dicts: predicted like races on tensors, on the real runtime (``forkcheck::touch`` ops) and under
forkcheck's own scheduler (list and dict method calls), named after the container, with both tasks and both lines;
none for a list each task builds for itself, for reads only, or for accesses fork/wait orders."""
from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from torch import Tensor, nn

import forkcheck
from forkcheck.engines import Observe
from forkcheck.engines.eager import EagerEngine
from forkcheck.oracles.races import race_findings
from forkcheck.schedules import Schedule

from test_races import SEEDS, engine_for, line_of, races_per_run, vector

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# -- scripted programs ----------------------------------------------------------------------------------------------


def put(parts: List[Tensor], x: Tensor) -> Tensor:
    parts.append(x * 2)  # at: append
    return x


def count(parts: List[Tensor], x: Tensor) -> Tensor:
    return x * len(parts)  # at: len


def appends_race(x: Tensor) -> Tensor:
    parts: List[Tensor] = []  # at: made
    f = torch.jit.fork(put, parts, x)
    g = torch.jit.fork(put, parts, x)
    torch.jit.wait(f)
    torch.jit.wait(g)
    return torch.cat(parts)


def length_races_append(x: Tensor) -> Tensor:
    parts: List[Tensor] = [x]
    f = torch.jit.fork(put, parts, x)
    g = torch.jit.fork(count, parts, x)
    torch.jit.wait(f)
    return torch.jit.wait(g)


def store(table: Dict[str, Tensor], x: Tensor) -> Tensor:
    table["k"] = x  # at: set
    return x


def dict_items_race(x: Tensor, table: Dict[str, Tensor]) -> Tensor:
    f = torch.jit.fork(store, table, x)
    g = torch.jit.fork(store, table, x + 1)
    return torch.jit.wait(f) + torch.jit.wait(g)


def own_list(x: Tensor) -> Tensor:
    mine: List[Tensor] = []
    for k in range(3):
        mine.append(x * k)
    return torch.stack(mine).sum(0)


def each_builds_its_own(x: Tensor) -> Tensor:
    futures = [torch.jit.fork(own_list, x) for _ in range(3)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)


def _total(part: Tensor) -> Tensor:
    return part.sum()


def over_chunks(x: Tensor) -> Tensor:
    """Each instance's chunk list (made by ``aten::chunk``, no constructor) may take the address of another
    instance's freed list of futures: it is another list, not a race."""
    futures = [torch.jit.fork(_total, part) for part in x.chunk(2)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum()


def reads_only(x: Tensor) -> Tensor:
    parts: List[Tensor] = []
    parts.append(x)  # before the forks: ordered before every read
    f = torch.jit.fork(count, parts, x)
    g = torch.jit.fork(count, parts, x)
    return torch.jit.wait(f) + torch.jit.wait(g) + parts[0]


def append_after_waiting(x: Tensor) -> Tensor:
    parts: List[Tensor] = [x]
    f = torch.jit.fork(count, parts, x)
    g = torch.jit.fork(count, parts, x)
    out = torch.jit.wait(f) + torch.jit.wait(g)
    parts.append(out)
    return torch.cat(parts)


class Cache(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = torch.jit.Attribute([], List[Tensor])

    def _remember(self, x: Tensor) -> Tensor:
        self.seen.append(x)  # at: remember
        return x

    def forward(self, x: Tensor) -> Tensor:
        f = torch.jit.fork(self._remember, x)
        g = torch.jit.fork(self._remember, x + 1)
        return torch.jit.wait(f) + torch.jit.wait(g)


def sides(race: forkcheck.Finding) -> set:
    return {(side["task"], side["op"], side["kind"], side["location"]) for side in race.detail["accesses"]}


def test_appends_to_a_shared_local_list_race_every_run_named_by_the_line_that_made_it() -> None:
    engine = engine_for(appends_race)
    for races in races_per_run(engine, vector):
        (race,) = races
        made, line = race.detail["name"].rsplit(":", 1)
        file, first = line_of(appends_race, "made").rsplit(":", 1)
        assert made == f"the list parts made by prim::ListConstruct at {file}"
        assert int(line) in (int(first), int(first) + 1)  # TorchScript gives ``[]`` no line: its neighbour's
        assert sides(race) == {(t, "aten::append", "write", line_of(put, "append")) for t in (1001, 1002)}
        assert race.tasks == [1001, 1002]
        assert "task 1.1" in race.message and "task 1.2" in race.message  # tree names: forked by instance 1


def test_a_length_read_racing_an_append_is_a_read_write_race() -> None:
    engine = engine_for(length_races_append)
    for races in races_per_run(engine, vector):
        (race,) = races
        assert sides(race) == {(1001, "aten::append", "write", line_of(put, "append")),
                               (1002, "aten::len", "read", line_of(count, "len"))}


def test_a_dict_argument_written_by_two_tasks_races_under_its_parameter_name() -> None:
    engine = engine_for(dict_items_race, names=("x", "table"))
    for races in races_per_run(engine, lambda: [torch.ones(3), {"k": torch.zeros(3)}]):
        (race,) = races
        assert race.detail["name"] == "the dict table"
        assert sides(race) == {(t, "aten::_set_item", "write", line_of(store, "set")) for t in (1001, 1002)}


def test_a_module_list_attribute_races_under_its_attribute_path() -> None:
    engine = engine_for(Cache())
    for races in races_per_run(engine, vector):
        (race,) = races
        assert race.detail["name"] == "the list self.seen"
        assert {side[3] for side in sides(race)} == {line_of(Cache._remember, "remember")}


@pytest.mark.parametrize("program", [each_builds_its_own, over_chunks, reads_only, append_after_waiting])
def test_no_race_on_own_lists_reads_only_or_ordered_accesses(program) -> None:
    engine = engine_for(program, tasks=3)  # three instances, each with lists of its own
    assert races_per_run(engine, vector) == [[] for _ in SEEDS]


def test_containers_nobody_writes_get_no_touches() -> None:
    from forkcheck.instrument import instrument

    with forkcheck._warnings.quiet_jit():
        program = instrument(torch.jit.script(reads_only))
        pure = instrument(torch.jit.script(each_builds_its_own))
    assert any(site.container == "list" for site in program.sites.values())
    assert not any(site.container for site in instrument(torch.jit.script(count)).sites.values())
    assert {site.event for site in pure.sites.values() if site.container} <= {"create", "write", "read"}


def test_a_list_an_op_returns_is_a_new_list() -> None:
    from forkcheck.instrument import instrument

    with forkcheck._warnings.quiet_jit():
        program = instrument(torch.jit.script(over_chunks))
    made = {site.kind for site in program.sites.values() if site.event == "create"}
    assert {"aten::chunk", "prim::ListConstruct"} <= made  # and appending returns the same list: no create
    assert "aten::append" not in made


def test_a_pure_fan_out_over_chunks_passes() -> None:
    checked = forkcheck.fork_safe(over_chunks, x=forkcheck.strategies.tensors(shape=(4, 3)))
    result = forkcheck.check(checked, seed=1)
    assert (result.verdict, result.findings) == ("pass", [])


def test_the_seeded_list_append_bug_fails_on_its_first_schedule_with_a_race() -> None:
    import seeded_bugs

    result = forkcheck.check(seeded_bugs.append_order, seed=3, examples=1, schedules=1)
    assert result.verdict == "fail"
    assert result.stats.failed_after == 1
    race = next(f for f in result.findings if f.kind == "race")
    assert race.detail["name"].startswith("the list parts made by prim::ListConstruct at ")
    assert {side["op"] for side in race.detail["accesses"]} == {"aten::append"}


def test_the_fixed_list_appends_pass() -> None:
    import seeded_bugs

    assert forkcheck.check(seeded_bugs.append_in_order, seed=3, examples=2, schedules=2).verdict == "pass"


# -- eager programs (forkcheck's own scheduler): a set in every fork keeps them from scripting ------------------------


def eager_put(parts: list, x: Tensor, tags: set) -> Tensor:
    parts.append(x * 2)  # at: eager-append
    return x


def eager_appends(x: Tensor, tags: set) -> Tensor:
    parts = []
    futures = [torch.jit.fork(eager_put, parts, x, tags) for _ in range(2)]
    for f in futures:
        torch.jit.wait(f)
    return torch.cat(parts)


def eager_note(table: dict, x: Tensor, tags: set) -> Tensor:
    table.setdefault("first", x)  # at: setdefault
    return x


def eager_dict(x: Tensor, tags: set, table: dict) -> Tensor:
    f = torch.jit.fork(eager_note, table, x, tags)
    g = torch.jit.fork(eager_note, table, x + 1, tags)
    return torch.jit.wait(f) + torch.jit.wait(g)


def eager_own(x: Tensor, tags: set) -> Tensor:
    def build(k: float) -> Tensor:
        mine = []
        mine.append(x * k)
        mine.extend([x])
        return torch.cat(mine)

    futures = [torch.jit.fork(build, float(k)) for k in range(3)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)


def eager_reads(x: Tensor, tags: set, table: dict) -> Tensor:
    def look(k: int) -> Tensor:
        return x * (table.get("n", 1) + list(table.values()).count(k))

    futures = [torch.jit.fork(look, k) for k in range(3)]
    return torch.stack([torch.jit.wait(f) for f in futures]).sum(0)


def eager_races(program, args, names, seed: int) -> list[forkcheck.Finding]:
    engine = EagerEngine(program, 1, "test", param_names=names)
    run = engine.run(args, Schedule("random", seed), Observe.ACCESSES)
    run.result()
    return race_findings(run.log)


@pytest.mark.parametrize("seed", SEEDS)
def test_eager_appends_to_a_shared_list_race(seed) -> None:
    (race,) = eager_races(eager_appends, [torch.ones(2), set()], ["x", "tags"], seed)
    assert race.detail["name"].startswith("the list parts (first used at ")
    assert sides(race) == {(t, "list.append", "write", line_of(eager_put, "eager-append")) for t in (1001, 1002)}  # by fork path


@pytest.mark.parametrize("seed", SEEDS)
def test_eager_dict_argument_written_by_two_tasks_races_under_its_name(seed) -> None:
    (race,) = eager_races(eager_dict, [torch.ones(2), set(), {}], ["x", "tags", "table"], seed)
    assert race.detail["name"] == "the dict table"
    assert {side[1:] for side in sides(race)} == {("dict.setdefault", "write", line_of(eager_note, "setdefault"))}


@pytest.mark.parametrize("program", [eager_own, eager_reads])
def test_eager_own_lists_and_reads_only_do_not_race(program) -> None:
    args = [torch.ones(2), set(), {"n": 2}][: len(inspect.signature(program).parameters)]
    for seed in SEEDS:
        assert eager_races(program, args, ["x", "tags", "table"][: len(args)], seed) == []
