"""``index.html`` from a report dict: counts, escaping, anchors, no outside resources, timelines, and linear size."""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from forkcheck.report.html import render_html, replay_command

HOSTILE = "<script>window.__pwned = 1</script>\"'><img src=http://example.invalid/x.png onerror=alert(1)>"


def synthetic_report(targets: int, source: str = __file__, complete: bool = True, hostile: bool = False) -> dict:
    """Items cycling through every verdict and finding kind; ``hostile`` puts markup into every user string."""
    evil = HOSTILE if hostile else ""
    results = []
    for i in range(targets):
        verdict = ("fail", "pass", "fail", "error", "pass", "skipped")[i % 6]
        nodeid = f"tests/test_model_{i // 50}.py::target_{i}{evil}"
        token = f"fc1.token{i}"
        findings = []
        if verdict == "fail":
            findings = [
                {"kind": "input-mutation", "location": f"{source}:20", "tasks": [1, 2, 3], "replay": token,
                 "message": f"input 'x' changed by aten::add_ at {source}:20: 3 of 12 elements changed, "
                            f"first at index [0, 1], largest absolute change 2{evil}",
                 "detail": {"name": f"x{evil}", "op": "aten::add_",
                            "changes": [f"3 of 12 elements changed, first at index [0, 1], largest absolute "
                                        f"change 2{evil}"],
                            "diff": {"shape": [4, 3], "dtype": "torch.float32", "changed": 3, "numel": 12,
                                     "max_abs": 2.0, "first": [[0, 1]],
                                     "grid": [[0, 1, 0], [0, 0.5, 0], [0, 0, 0], [2, 0, 0]]}}},
                {"kind": "race", "location": f"{source}:21", "tasks": [1, 2], "replay": token,
                 "message": f"tasks 1 and 2 wrote the storage of 'x' with no fork/wait order between them{evil}",
                 "detail": {"events": [
                     {"task": 0, "kind": "fork", "child": 1}, {"task": 0, "kind": "fork", "child": 2},
                     {"task": 1, "kind": "read", "op": "aten::sum", "location": f"{source}:20"},
                     {"task": 1, "kind": "write", "op": f"aten::add_{evil}", "location": f"{source}:21",
                      "conflict": True},
                     {"task": 2, "kind": "write", "op": "aten::add_", "location": f"{source}:21", "conflict": True},
                     {"task": 0, "kind": "wait", "child": 1}, {"task": 0, "kind": "wait", "child": 2}]}},
            ]
            if i % 4 == 2:
                findings.append({"kind": "nondeterminism", "location": f"{source}:22", "tasks": [2], "replay": token,
                                 "message": "task 2 of 3 returned a different output than the serial reference",
                                 "detail": {"differences": [f"output: 1 of 4 elements changed{evil}"]}})
                findings.append({"kind": "exception", "location": f"{source}:23", "tasks": [1, 2, 3],
                                 "replay": token, "message": f"a forked task raised ValueError{evil}",
                                 "detail": {"traceback": f"Traceback (most recent call last):\n  ValueError{evil}\n"}})
        results.append({
            "target": f"test_model_{i // 50}:target_{i}", "kind": "test" if i % 7 == 6 else "target",
            "nodeid": nodeid, "engine": "script" if i % 2 else "eager",
            "engine_reason": "" if i % 2 else f"it does not script{evil}", "verdict": verdict,
            "examples": 10, "schedules": 100, "duration_s": 0.25,
            "findings": findings, "failing_input": {"x": f"tensor([[0., 1., 2.]]){evil}"} if findings else {},
            "error": f"setup error: cannot infer a strategy for 'y'{evil}" if verdict == "error" else "",
            "stats": {"seed": i, f"note{evil}": evil} if hostile else {"seed": i},
        })
    return {"forkcheck": "0.1.0", "torch": "2.13.0", "seed": 7, "complete": complete, "results": results}


class Page(HTMLParser):
    """Every start tag with its attributes, and the text inside ``<style>`` and ``<script>``."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.inline: list[tuple[str, str]] = []
        self._open = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("style", "script") else ""

    def handle_data(self, data):
        if self._open:
            self.inline.append((self._open, data))

    def handle_endtag(self, tag):
        self._open = ""

    def all(self, tag: str = "", cls: str = "") -> list[dict]:
        return [attrs for t, attrs in self.tags
                if (not tag or t == tag) and (not cls or cls in (attrs.get("class") or "").split())]


def test_summary_counts_match_the_results():
    report = synthetic_report(12)
    page = Page(render_html(report))
    verdicts = Counter(r["verdict"] for r in report["results"])
    items = page.all("details", "item")
    assert len(items) == 12
    assert Counter(a["data-verdict"] for a in items) == verdicts
    text = render_html(report)
    for verdict, label in (("fail", "failed"), ("pass", "passed"), ("skipped", "skipped")):
        assert f'<span class="num">{verdicts[verdict]}</span><span class="label">{label}</span>' in text
    assert "Concurrent schedules</dt><dd>1200</dd>" in text
    assert '<span class="kind k-race">race</span></a> <span class="count">4</span>' in text
    assert "Needs attention" in text
    assert len(page.all("article", "finding")) == sum(len(r["findings"]) for r in report["results"])


def test_every_user_string_is_escaped():
    text = render_html(synthetic_report(12, hostile=True))
    page = Page(text)
    assert "<script>window.__pwned" not in text and "&lt;script&gt;window.__pwned" in text
    assert [tag for tag, _ in page.tags].count("script") == 1
    assert not [attrs for _, attrs in page.tags if any(name.startswith("on") for name in attrs)]
    assert not page.all("img")


def test_anchors_are_unique_and_every_link_lands():
    report = synthetic_report(30)
    report["results"].append(dict(report["results"][0]))  # the same node id twice still gets two anchors
    page = Page(render_html(report))
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert len(ids) == len(set(ids))
    assert all(anchor.startswith("t-") for anchor in ids if "--" in anchor)
    links = {attrs["href"][1:] for attrs in page.all("a") if attrs.get("href", "").startswith("#")}
    assert links and links <= set(ids)
    finding_ids = [a["id"] for a in page.all("article", "finding")]
    assert all(f"#{anchor}" in {a.get("href") for a in page.all("a")} for anchor in finding_ids)


def test_anchors_are_stable_between_renders():
    first = [a["id"] for a in Page(render_html(synthetic_report(6))).all("article")]
    again = [a["id"] for a in Page(render_html(synthetic_report(6))).all("article")]
    assert first == again


def test_the_page_references_no_outside_resource():
    text = render_html(synthetic_report(12, hostile=True))
    page = Page(text)
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "action", "data", "poster"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, name, value)
    assert all(a.get("rel") == "icon" and a["href"].startswith("data:") for a in page.all("link"))
    assert not [a for a in page.all("script") if "src" in a]
    for kind, body in page.inline:
        assert "http:" not in body and "https:" not in body and "@import" not in body, kind
    csp = next(a["content"] for a in page.all("meta") if a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp


def test_an_incomplete_run_has_a_banner():
    assert "Incomplete run." in render_html(synthetic_report(3, complete=False))
    assert "Incomplete run." not in render_html(synthetic_report(3))


def test_readable_without_javascript():
    page = Page(render_html(synthetic_report(12)))
    assert "hidden" in next(a for a in page.all("div") if a.get("id") == "filters")
    assert all("hidden" in a for a in page.all("button", "copy"))
    for attrs in page.all("details", "item"):
        assert ("open" in attrs) == (attrs["data-verdict"] in ("fail", "error"))


def test_finding_shows_location_snippet_and_replay(tmp_path):
    source = tmp_path / "model.py"
    source.write_text("".join(f"line_{n} = {n}\n" for n in range(1, 20)) + "x.add_(1)  # <b>\n")
    report = synthetic_report(1, source=str(source))
    report["results"][0]["findings"][0]["location"] = f"{source}:20"
    text = render_html(report)
    assert '<span class="line hit"><span class="ln">20</span>x.add_(1)  # &lt;b&gt;</span>' in text
    assert "line_18 = 18" in text and "line_17 = 17" not in text
    assert "pytest &#39;tests/test_model_0.py::target_0&#39; --forkcheck-replay fc1.token0" in text
    assert "<th scope=\"row\">largest absolute change</th><td><code>2</code>" in text


def test_only_python_files_are_read_for_snippets(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show\n")
    report = synthetic_report(1)
    report["results"][0]["findings"][0]["location"] = f"{secret}:1"
    report["results"][0]["findings"][1]["location"] = f"{tmp_path / 'missing.py'}:3"
    text = render_html(report)
    assert "do not show" not in text
    assert "secret.txt:1" in text


def test_replay_command_quotes_the_node_id():
    assert replay_command("t.py::f", "fc1.abc") == "pytest 't.py::f' --forkcheck-replay fc1.abc"
    assert replay_command("t.py::f[it's]", "fc1.abc") == "pytest 't.py::f[it'\"'\"'s]' --forkcheck-replay fc1.abc"


def test_timelines_draw_recorded_events_or_task_lanes():
    text = render_html(synthetic_report(1))
    page = Page(text)
    assert text.count('<figure class="timeline">') == 2  # the mutation (task lanes) and the race (events)
    assert "aten::add_ · line 20</text>" in text  # the mutation's lanes: the op and its line
    assert ">1 writes</text>" in text and ">2 writes</text>" in text  # the race's accesses, numbered as listed
    conflicts = [a for a in page.all("g") if "conflict" in (a.get("class") or "")]
    assert len(conflicts) == 3 + 2  # three task lanes marked for the mutation, two accesses for the race
    lanes = [a for a in page.all("g") if (a.get("class") or "").startswith("lane")]
    assert len(lanes) == 4 + 3  # main and tasks 1-3; main and tasks 1-2
    arrows = [(a.get("class") or "").split() for a in page.all("line", "arrow")]
    assert sum("fork" in a for a in arrows) == 3 + 2 and sum("wait" in a for a in arrows) == 3 + 2
    assert [a for a in page.all("ul", "legend")] and "fork</text>" in text and "wait</text>" in text


def test_mutation_heatmap_and_facts_from_the_oracle_text():
    page = Page(render_html(synthetic_report(1)))
    assert len(page.all("rect", "cell")) == 3  # the non-zero changes
    report = synthetic_report(1)
    del report["results"][0]["findings"][0]["detail"]["diff"]
    report["results"][0]["failing_input"] = {"x": "tensor([...]) (shape [4, 3], torch.float32)"}
    text = render_html(report)
    assert "<td><code>3 of 12</code>" in text and "<td><code>(0, 1)</code>" in text
    assert "<li>3 of 12 elements changed" not in text  # the table says it: not again as a bullet
    assert "<td><code>torch.float32</code>" in text and not Page(text).all("rect", "cell")


def test_heatmap_draws_infinities_and_nans_as_the_largest_change():
    report = synthetic_report(1)
    report["results"][0]["findings"][0]["detail"]["diff"]["grid"] = [[0, float("nan")], [float("inf"), 4]]
    cells = Page(render_html(report)).all("rect", "cell")
    assert [c["fill-opacity"] for c in cells] == ["1.00", "1.00", "1.00"]


def test_sparse_rows_render():
    """Rows written for items that never reached forkcheck (skips, collection errors) carry few fields."""
    report = {"forkcheck": "0.1.0", "torch": "2.13.0", "seed": None, "complete": True, "results": [
        {"nodeid": "t.py::f", "target": "t.py::f", "kind": "test", "verdict": "skipped", "engine": "",
         "examples": 0, "schedules": 0, "duration_s": 0.0, "findings": [], "error": ""},
        {"nodeid": "t.py::g", "verdict": "error", "findings": [{"kind": "hang", "message": "stuck"}]}]}
    page = Page(render_html(report))
    assert [a["data-verdict"] for a in page.all("details", "item")] == ["skipped", "error"]


def test_without_jinja2_a_plain_escaped_page(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    text = render_html(synthetic_report(6, complete=False, hostile=True))
    assert "<script>window.__pwned" not in text and "Incomplete run" in text and "forkcheck[html]" in text


def test_rendering_imports_no_torch():
    code = ("import sys, forkcheck.report.html as h; "
            "h.render_html({'forkcheck': '0', 'torch': '0', 'seed': 1, 'results': []}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_thousand_targets_render_in_linear_size():
    """Size grows linearly with the targets (render time is measured by benchmarks/bench_report.py)."""
    small, large = len(render_html(synthetic_report(200))), len(render_html(synthetic_report(1000)))
    assert 4.5 < large / small < 5.5  # five times the targets


# -- written for people: no Python literal, task names, relative paths, one replay per target ------------------------

REPR = re.compile(r"\[\{'|\{'|'\w+': |(?<![\w-])(?:True|False|None)(?![\w-])|\[\d+, \d+")


def page_text(html_text: str) -> str:
    """What a reader sees, without the inputs table (the user's values, as Python writes them) and tracebacks."""
    class Text(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.parts, self.skip = [], 0

        def handle_starttag(self, tag, attrs):
            classes = (dict(attrs).get("class") or "").split()
            if self.skip or tag in ("style", "script") or "inputs" in classes or "traceback" in classes:
                self.skip += 1

        def handle_endtag(self, tag):
            self.skip = max(0, self.skip - 1) if self.skip else 0

        def handle_data(self, data):
            if not self.skip:
                self.parts.append(data)

    parser = Text()
    parser.feed(html_text)
    return " ".join(parser.parts)


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_report() -> dict:
    """``forkcheck.json`` of real checks of three examples, as the plugin builds it."""
    import importlib.util

    import forkcheck
    from forkcheck.report.json import build_report

    rows = {}
    for name, target, settings in (("chunked_sum", "chunked_sum", {"examples": 4}),
                                   ("batchnorm_split", "SplitBatchNorm", {}),
                                   ("global_cache", "add_positions", {})):
        spec = importlib.util.spec_from_file_location(f"fc_example_{name}", ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = forkcheck.check(getattr(module, target), seed=3, schedules=3, **settings)
        result.nodeid = f"examples/{name}.py::{target}"
        rows[result.nodeid] = result.to_json()
    return build_report(rows, 3, run={"rootdir": str(ROOT), "wall_s": 12.5, "command": "pytest"})


@pytest.mark.slow
def test_a_real_report_reads_as_sentences(real_report):
    """Real results of a race (nested tasks), a module buffer written by BatchNorm and a global: no reprs."""
    text = page_text(render_html(real_report))
    found = REPR.findall(text)
    assert not found, f"Python literals in the page: {found[:10]}"
    assert "task 1.1" in text and "task 1001" not in text
    assert real_report["rootdir"] not in text  # every path relative to the rootdir
    assert "tasks that race" in text and "shown with" not in text or "inter-op pools of" in text


def test_one_replay_per_target_and_a_findings_own_only_where_it_differs():
    report = synthetic_report(3)
    findings = report["results"][2]["findings"]
    findings[2]["replay"] = "fc1.other"
    page = render_html(report)
    item = page[page.index('id="t-tests-test-model-0-py-target-2-'):]
    item = item[:item.index("</section>")]  # the last item
    assert item.count('class="replay"') == 2
    assert "reruns the example of the first finding (input-mutation)" in item
    assert "reruns the example of finding 3 (nondeterminism)" in item and "fc1.other" in item


def test_task_names_read_as_a_tree():
    from forkcheck.task_names import task_name

    assert [task_name(t) for t in (0, 1, 3, 1001, 2001, 2001002)] == [
        "main", "task 1", "task 3", "task 1.1", "task 2.1", "task 2.1.2"]
    assert task_name(2**62 + 5).startswith("task #")


def test_an_item_s_own_seed_says_it_comes_from_the_session_s_and_which_to_rerun_with():
    text = render_html(synthetic_report(3))  # items' seeds 0, 1, 2; the session's 7
    assert "drawn from the session" in text and "seed 7 (rerun with --forkcheck-seed 7)" in text
    alone = synthetic_report(1)
    alone["seed"] = 0  # the session's own seed: nothing to explain
    assert "drawn from the session" not in render_html(alone)


def test_a_serial_run_finding_draws_no_task_timeline_and_the_engine_reads_as_in_the_terminal():
    from forkcheck.report.terminal import ENGINES, failure_text

    def row(run: str) -> dict:
        detail = {"name": "m.SEEN", **({"run": run} if run else {})}
        return {"target": "m:t", "nodeid": f"t.py::{run or 'concurrent'}", "verdict": "fail", "engine": "eager",
                "engine_reason": "torch.jit.script failed: no", "examples": 1, "schedules": 1,
                "findings": [{"kind": "global-mutation", "message": "global 'm.SEEN' changed", "location": "m.py:3",
                              "tasks": [1], "detail": detail}]}

    page = render_html({"results": [row("serial"), row("")], "complete": True})
    assert page.count('aria-label="Task timeline"') == 1  # the concurrent run's finding only
    assert "the serial reference run: the target called once, its forks inline" in page
    scheduler = ENGINES["eager"].replace("'", "&#39;")  # as the template escapes it
    assert f"Ran on <strong>{scheduler}</strong>" in page
    assert f"(eager engine, {ENGINES['eager']}; torch.jit.script failed: no)" in failure_text(row(""))


def test_a_row_from_an_earlier_session_is_not_told_to_rerun_with_this_session_s_seed():
    def row(nodeid: str, run_at: str, seed: int) -> dict:
        return {"target": "m:t", "nodeid": nodeid, "verdict": "pass", "engine": "script", "examples": 1,
                "schedules": 1, "findings": [], "run_at": run_at, "stats": {"seed": seed}}

    page = render_html({"results": [row("t.py::old", "2026-12-01T10:00:00Z", 11), row("t.py::new",
                                                                                       "2026-12-02T10:00:00Z", 22)],
                        "complete": True, "seed": 5, "run_at": "2026-12-02T10:00:00Z"})
    assert page.count("rerun with --forkcheck-seed 5") == 1  # this session's row only
    assert "11: this check&#39;s own, drawn from the seed of the session that ran it" in page


def test_a_stopped_copy_s_stacks_are_a_collapsed_block_not_a_fact_row():
    report = synthetic_report(1)
    stacks = 'Fatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n  File "t.py", line 3 in f\n'
    report["results"][0]["findings"] = [{"kind": "hang", "location": f"{__file__}:3", "tasks": [], "replay": "",
                                         "message": "schedule 1 of 10 did not finish within 1 s",
                                         "detail": {"timeout_s": 1, "stacks": stacks}}]
    text = render_html(report)
    block = text[text.index("<summary>Where each thread was when it was stopped</summary>"):]
    assert block.index("<pre>Fatal Python error: Aborted\n\nCurrent thread 0x1") < block.index("</details>")
    assert ">stacks<" not in text  # not a row of the finding's facts, its line breaks lost
