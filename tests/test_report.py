"""Snakemake's HTML report holds every figure and summary table, each with its caption.

The report is built by the real `snakemake --report` from a small run on the
tiny model; the test reads the result records embedded in the HTML (the
report's `var results = {…}` object) and the rendered workflow page.
"""

from __future__ import annotations

import base64
import json
import re

from test_workflow import snakemake

from conftest import REPO


def report_records(html: str) -> dict:
    """The report's result records: path -> {labels, caption, data_uri, mime_type, …}."""
    start = html.index("var results = {") + len("var results = ")
    records, _ = json.JSONDecoder().raw_decode(html[start:])
    return records


def expected_reported(tiny_run) -> list[str]:
    """Every output of the run that a rule marks for the report."""
    figures = sorted(p.relative_to(tiny_run).as_posix() for p in tiny_run.glob("results/**/*.png"))
    tables = sorted(p.relative_to(tiny_run).as_posix() for p in tiny_run.glob("results/**/*.html"))
    assert figures and tables
    return figures + tables


def test_report_holds_every_figure_and_table_with_a_caption(tiny_run):
    run = snakemake(tiny_run, "--report", "report.html")
    assert run.returncode == 0, run.stderr[-3000:]
    html = (tiny_run / "report.html").read_text()
    records = report_records(html)
    assert sorted(records) == expected_reported(tiny_run)
    for path, record in records.items():
        # A caption of at least one sentence, rendered from its .rst file.
        assert len(re.sub(r"<[^>]+>", "", record["caption"])) > 80, path
        assert record["labels"], path
        # The embedded file is the file on disk.
        encoded = record["data_uri"].split("base64,", 1)[1]
        assert base64.b64decode(encoded) == (tiny_run / path).read_bytes(), path
    bayes = records["results/tables/bayes_summary.html"]
    page = base64.b64decode(bayes["data_uri"].split("base64,", 1)[1]).decode()
    for task in ("identity", "double", "double_shuffled"):
        assert f"<td>{task}</td>" in page
    # One summary per analysis stage the run made, each with a row per task.
    for stage in ("probe", "lens", "heads", "patching"):
        record = records[f"results/tables/{stage}_summary.html"]
        page = base64.b64decode(record["data_uri"].split("base64,", 1)[1]).decode()
        assert "<td>double_shuffled</td>" in page, stage
    # The workflow page is rendered from the config that ran: its tasks and scoring convention
    # (the page is embedded as a JSON-escaped string).
    for text in ("Scoring convention", "<td>double_shuffled</td>", "2*x", r"0 \u2026 40"):
        assert text in html, text
    assert "local folder" in html
    # The workflow page states the run's answers, generated into results/answers.rst by the run
    # and included there when the report is made (not text of the page itself).
    answers = (tiny_run / "results" / "answers.rst").read_text()
    for generated in ("no task is learned with an informative fit", "is not learned (mean P(A)"):
        assert generated in answers and generated in html, generated
    assert "Answers of this run" in html and "made without the run" not in html
    assert "System Message" not in html  # the rst rendered without docutils warnings


def test_report_files_are_not_committed():
    ignored = (REPO / ".gitignore").read_text().split()
    assert "report.html" in ignored and "report.zip" in ignored
