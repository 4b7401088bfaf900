from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_no_bulk_history.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_no_bulk_history", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_flags_bulk_writes_on_versioned_models_and_only_those(tmp_path):
    app = tmp_path / "risk"
    app.mkdir()
    (app / "services.py").write_text(
        "RiskLimit.objects.filter(pk=1).update(max_order_qty=1)\n"
        "RiskLimit.objects.bulk_create([RiskLimit()])\n"
        "Automation.objects.bulk_update(rows, ['mode'])\n"
        "RiskState.objects.filter(pk=1).update(tripped=True)\n"
        "Automation.objects.select_for_update().get(pk=1)\n"
        "Automation.objects.filter(pk=1).update(approved_trade_count=2)  # history-ok: counter only\n"
    )
    checker = _load()
    found = checker.offences(app / "services.py")
    assert [line.split(":")[1] for line in found] == ["1", "2", "3"]
    assert checker.main(["x", str(tmp_path)]) == 1


def test_it_passes_a_clean_tree(tmp_path):
    (tmp_path / "automations").mkdir()
    (tmp_path / "automations" / "services.py").write_text("automation.save()\n")
    assert _load().main(["x", str(tmp_path)]) == 0
