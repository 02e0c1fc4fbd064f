"""The controller's side of a session: one result row per forkcheck item, merged into the report already there.

A partial run (``-k``, ``--lf``, a replay) keeps the rows of the items it did not run, each with the time of the
run that produced it (``run_at``); a row is dropped when its item no longer exists: its file is gone, or its file
was collected in this run and the item was not. A replay's row goes beside the row it replays (``replay_run``).
``--forkcheck-fresh-report`` starts over. Only a ``forkcheck.json`` forkcheck wrote is merged into.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest

NOT_RUN = "not run: the session stopped before this item (-x, --maxfail, an interrupt or a crash)"


def now() -> str:
    """The time a run started, as rows carry it: ISO 8601, UTC, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def merge_rows(previous: Iterable[Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]], rootdir: Path,
               seen: set[str], replay: str, partly: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The report's rows after this run: ``new`` over the ``previous`` rows of items that still exist (``seen``:
    the node ids collected in this run, deselected ones too; ``partly``: files only some of whose items were asked
    for, as in ``file.py::name``); a replay's row joins the row whose finding gave its token (``replay``) or a row
    that passes (does the failure still come back?), and takes the place of a row whose findings gave other tokens
    (the item was checked again since: the replay is not of that row's failure)."""
    files = {nodeid.split("::")[0] for nodeid in seen} - set(partly)
    rows: dict[str, dict[str, Any]] = {}
    for row in previous:
        nodeid = row.get("nodeid") if isinstance(row, Mapping) else None
        if not isinstance(nodeid, str) or not nodeid:
            continue
        file = nodeid.split("::")[0]
        if not (rootdir / file).exists() or (file in files and nodeid not in seen):
            continue
        rows[nodeid] = dict(row)
    for nodeid, row in new.items():
        if replay and nodeid in rows and _joins(rows[nodeid], replay):
            rows[nodeid] = dict(rows[nodeid], replay_run=dict(row))
        else:
            rows[nodeid] = dict(row)
    return rows


def _joins(row: Mapping[str, Any], token: str) -> bool:
    """Whether the replay of ``token`` goes beside ``row``: it passes, or one of its findings gave the token."""
    if row.get("verdict") == "pass":
        return True
    findings = row.get("findings") if row.get("verdict") == "fail" else None
    return isinstance(findings, list) and any(isinstance(f, Mapping) and f.get("replay") == token for f in findings)


class ResultCollector:
    """On the controller: keeps one result row per forkcheck item, by nodeid, and writes the report once."""

    def __init__(self, state: Any, rootdir: Path):
        self.state = state
        self.rootdir = rootdir
        self.run_at = now()
        self.started = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        kind = getattr(report, "forkcheck_kind", None)
        if kind is None:
            if report.when == "???" and report.failed:  # pytest-xdist: a worker crashed running this item
                self.state.crashed[report.nodeid] = str(report.longrepr)
            return
        results = self.state.results
        row = getattr(report, "forkcheck_result", None)
        if row is not None:
            results[report.nodeid] = row
        elif report.skipped and report.nodeid not in results:
            results[report.nodeid] = _row(report, kind, "skipped")
        elif report.failed:
            row = results.get(report.nodeid) or _row(report, kind, "error")
            if row["verdict"] != "fail":  # e.g. a fixture's setup or teardown failed: never a silent pass
                results[report.nodeid] = dict(row, verdict="error", error=report.longreprtext[-4000:])

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """pytest-xdist: a worker is done; the items it selected (all workers select the same ones)."""
        output = getattr(node, "workeroutput", {})
        self.state.collected.update(output.get("forkcheck_items", {}))
        self.state.seen.update(output.get("forkcheck_seen", ()))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._complete()
        options = self.state.options
        if options.no_report or not self.state.results:
            return
        from .report import previous_report, write_reports

        for row in self.state.results.values():
            row.setdefault("run_at", self.run_at)
        rows = self.state.results
        if not options.fresh_report:
            previous = previous_report(Path(options.report)).get("results", [])
            rows = merge_rows(previous, rows, self.rootdir, self.state.seen | set(rows), options.replay or "",
                              self._partly(session.config))
        run = {"run_at": self.run_at, "wall_s": round(time.monotonic() - self.started, 3),
               "rootdir": str(self.rootdir), "command": self.state.invocation,
               **({"replay": True} if options.replay else {})}  # its seed drew no search
        self.state.report_paths = write_reports(options.report, rows, self.state.seed,
                                                complete=exitstatus != pytest.ExitCode.INTERRUPTED, run=run)

    def _partly(self, config: pytest.Config) -> set[str]:
        """Files only some of whose items were asked for: named with a node id on the command line (``file.py::name``),
        or every file under ``--lf`` (which leaves the passing items out of the collection itself)."""
        if config.getoption("lf", False):
            return {nodeid.split("::")[0] for nodeid in self.state.seen}
        partly = set()
        for arg in config.args:
            if "::" in arg:
                path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
                try:
                    partly.add(path.relative_to(self.rootdir.resolve()).as_posix())
                except ValueError:
                    pass
        return partly

    def _complete(self) -> None:
        """Every selected item gets its row: one whose worker crashed is an error, one never run is skipped."""
        from .findings import CheckResult

        results = self.state.results
        for nodeid, text in self.state.crashed.items():
            known = results.get(nodeid) or self.state.collected.get(nodeid)
            if known is not None:
                row = results.get(nodeid) or CheckResult(target=known["target"], kind=known["kind"],
                                                         nodeid=nodeid).to_json()
                results[nodeid] = dict(row, verdict="error", error=f"{text}: the process running it died (a crash "
                                                                    "in the test or target, or in torch under it)")
        for nodeid, known in self.state.collected.items():
            if nodeid not in results:
                results[nodeid] = CheckResult(target=known["target"], kind=known["kind"], nodeid=nodeid,
                                              verdict="skipped", error=NOT_RUN).to_json()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.state.results:
            return
        from .report.terminal import summary_lines

        terminalreporter.write_sep("=", "forkcheck")
        header_hidden = terminalreporter.verbosity < 0 or getattr(terminalreporter.config.option, "no_header", False)
        searched = not self.state.options.replay  # a replay's seed draws nothing
        for line in summary_lines(list(self.state.results.values()), self.state.report_paths,
                                  self.state.invocation, str(self.rootdir),
                                  seed=self.state.seed if header_hidden and searched else None):
            terminalreporter.write_line(line)


def _row(report: pytest.TestReport, kind: str, verdict: str) -> dict[str, Any]:
    from .findings import CheckResult

    return CheckResult(target=report.nodeid, kind=kind, nodeid=report.nodeid, verdict=verdict,
                       duration_s=round(report.duration, 3)).to_json()
