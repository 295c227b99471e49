import pytest

from proxynorm.analysis.demo import demo_report, run_demo


def test_demo_needs_two_inputs_to_measure_batch_dependence():
    with pytest.raises(ValueError, match="batch must be >= 2"):
        run_demo(("bn",), batch=1)


def test_demo_report_states_the_setting_and_the_reading():
    text = demo_report(["bn", "ln"], depth=4, width=8, batch=4, size=8, seed=0)
    assert text.startswith("Random conv net: depth 4, width 8")
    assert "| bn |" in text and "| ln |" in text
    assert text.rstrip().endswith("PN keeps LN/GN close to BN.")
