"""Instrument names are data, not markup: whatever a valid tick names its instrument (`X$^$`, `<script>`,
`a_b^c`, `$\\frac{1}{0}$`, any Unicode), `backtest` writes its plots and report.html, and the page shows the
name escaped. Matplotlib reads `$...$` in a label as mathtext; a name among the most active used to end the
backtest with a traceback and no report."""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.evaluation.backtest import run_backtest
from pipeline.evaluation.report import write_report
from pipeline.files.synthetic import generate_ticks

TICKS = generate_ticks(3, 600, seed=11, bad_fraction=0.0)
ORIGINAL = sorted(set(TICKS.column("instrument").to_pylist()))

MARKUP = st.sampled_from(["X$^$", "$", "$$", "a_b^c", "$\\frac{1}{0}$", "\\", "<script>alert(1)</script>",
                          "&amp;", "{", "}", "%", "#", "'\"", "${x}", "$x$y$", "\\mathrm{", "_", "^"])
NAMES = st.one_of(MARKUP, st.text(min_size=1, max_size=24), st.builds(lambda a, b: a + b, MARKUP, st.text(max_size=8)))


def renamed(names: list[str]) -> pa.Table:
    column = TICKS.column("instrument")
    for old, new in zip(ORIGINAL, names):
        column = pc.if_else(pc.equal(column, old), new, column)
    return TICKS.set_column(0, "instrument", column)


def check_report(out: Path) -> None:
    page = (out / "report.html").read_bytes().decode()  # as written (read_text would turn \r into \n)
    served = pq.read_table(out / "forecasts.parquet").column("instrument").unique().to_pylist()
    assert served, "nothing was forecast"
    for name in served:
        assert html.escape(str(name)) in page, name
    for name in served:  # the raw name appears only where it is harmless (no markup of ours around it)
        if "<" in str(name):
            assert str(name) not in page


@pytest.mark.filterwarnings("ignore:Glyph")  # fonts lack most of Unicode: boxes, not errors
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(NAMES, min_size=3, max_size=3, unique=True))
def test_backtest_and_report_escape_any_instrument_name(bundle, names):
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bt"
        run_backtest(renamed(names), bundle, out, progress=False, source_name="$x$/" + names[0])
        assert (out / "report.html").is_file()
        assert list((out / "plots").glob("*.png"))
        check_report(out)
        (out / "report.html").unlink()
        write_report(out)  # `tickcast report` on the same folder
        check_report(out)


@pytest.mark.parametrize("name", ["X$^$", "$\\frac{1}{0}$", "a$b"])
def test_the_name_from_the_issue_gets_a_report(bundle, tmp_path, name):
    out = tmp_path / "bt"
    run_backtest(renamed([name, "B", "C"]), bundle, out, progress=False)
    check_report(out)
