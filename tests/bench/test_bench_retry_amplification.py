"""The retry amplification benchmark runs end to end; its figures are reported, and only
their shape (and the exact ones, 1.0 and 3.0) is checked, never a speed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import retry_amplification


@pytest.mark.timeout(60)
def test_quick_run_reports_every_configuration(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "retry_amplification.json"
    results = retry_amplification.run(quick=True, stdout=out, output=output)

    assert json.loads(output.read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    assert results["quick"] is True
    rows = {(row["budget"], row["failure_rate"]): row for row in results["rows"]}
    assert set(rows) == {(b, r) for b in (True, False) for r in retry_amplification.RATES}
    for row in rows.values():
        assert row["calls"] == retry_amplification.QUICK.calls
        assert 1.0 <= row["attempts_per_call"] <= retry_amplification.MAX_ATTEMPTS
    # No failures means no retries; a dead server gets max_attempts without the budget.
    assert rows[(True, 0.0)]["attempts_per_call"] == rows[(False, 0.0)]["attempts_per_call"] == 1
    assert rows[(False, 1.0)]["attempts_per_call"] == retry_amplification.MAX_ATTEMPTS
    assert rows[(True, 1.0)]["attempts_per_call"] <= 1.1
    assert "retry amplification" in out.getvalue()
