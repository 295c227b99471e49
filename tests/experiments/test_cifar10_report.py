"""The claims and the answer in words of docs/RESULTS.md (experiments/cifar10_report.py) follow the
numbers they are given, whichever way those go."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "cifar10_report.py"


def _report():
    spec = importlib.util.spec_from_file_location("cifar10_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _st(mean, n=2, std=0.5):
    return {"mean": mean, "std": std, "n": n, "values": [mean] * n}


def _evidence(bn_by_device, full):
    return {
        "devices": {
            k: {"test_acc": _st(bn_by_device[k]) if k in bn_by_device else None}
            for k in (2, 4, 8, 16, 32)
        },
        "independent": {"gn+pn": {"test_acc": _st(66.0, 3)}},
        "full": {norm: {"test_acc": None if v is None else _st(v)} for norm, v in full.items()},
    }


def _acc(table):
    return lambda study, norm, key="test_acc": table.get((study, norm))


BATCH128 = {("batch128", "bn"): (70.0, 0.3, 3), ("batch128", "gn+pn"): (66.0, 1.5, 3),
            ("batch128", "gn"): (51.0, 1.8, 3)}  # fmt: skip


def test_bn_breaking_at_small_batches_and_trailing_at_128_is_said_with_the_numbers():
    r = _report()
    ev = _evidence({2: 62.0, 4: 69.0, 8: 71.0}, {"bn": 85.0, "gn+pn": 83.5, "gn": 82.0})
    claims = r.evidence_claims(ev, _acc(BATCH128))
    where = next(c for c in claims if c["claim"].startswith("where BN breaks"))
    assert where["holds"] and where["values"] == [2, 2]
    text = r.short_answer(claims)
    assert "sees 2 images or fewer** (the smallest tested)" in text
    assert "trails it by 4.00 pp" in text and "1.50 pp (50k images" in text
    assert "GN+PN is ahead of GN" in text and "+1.50 pp; at 10k/20 ep. +15.00 pp" in text


def test_bn_ahead_everywhere_and_gn_plus_pn_matching_bn_are_not_turned_into_advice_to_switch():
    r = _report()
    ev = _evidence({2: 67.0, 4: 69.0}, {"bn": 85.0, "gn+pn": 84.9, "gn": 85.5})
    claims = r.evidence_claims(ev, _acc(BATCH128))
    text = r.short_answer(claims)
    assert "BN stays ahead of GN+PN at every per-device batch tested" in text
    assert "Replace BN" not in text
    assert "keep BN" not in text  # 50k: within 0.3 pp, so "matches" holds there
    assert "GN+PN is not ahead of GN" in text


def test_missing_full_data_runs_leave_their_claims_open():
    r = _report()
    ev = _evidence({2: 62.0}, {"bn": None, "gn+pn": None, "gn": None})
    claims = r.evidence_claims(ev, _acc(BATCH128))
    open_claims = [c for c in claims if c["holds"] is None]
    assert [c["detail"] for c in open_claims] == ["runs missing"]
    assert "keep BN" not in r.short_answer(claims)


def _paper_row(finals=(), running=(), curve=None):
    """A paper160 row: finished test accuracies, unfinished (seed, epoch, test) and one curve."""
    curves = {0: {"test_acc": curve, "train_acc": curve}} if curve else {}
    return {"test_acc": _st(sum(finals) / len(finals), len(finals)) if finals else None,
            "train_acc": None, "curves": curves, "missing": [], "commits": [],
            "running": [{"seed": s, "epoch": e, "test_acc": t, "train_acc": t}
                        for s, e, t in running]}  # fmt: skip


def test_paper_protocol_claims_stay_open_while_a_side_runs_and_follow_the_numbers_after():
    r = _report()
    pp = {"bn": _paper_row(running=[(0, 116, 87.3)]), "gn": _paper_row(),
          "gn+pn": _paper_row([91.2]), "bn-nb2": _paper_row()}  # fmt: skip
    claims = {c["claim"]: c for c in r.paper160_claims(pp)}
    match = claims[r.CLAIM_MATCH_160]
    assert match["holds"] is None and "bn/seed0 at epoch 116/160 (test 87.30)" in match["detail"]
    assert claims[r.CLAIM_PAPER_160]["holds"] is None  # GN+PN within 0.5 pp, the others open
    assert "still running" in r.short_answer(list(claims.values()))
    pp["gn+pn"] = _paper_row([87.1])  # one finished norm out of the tolerance settles it
    paper = {c["claim"]: c for c in r.paper160_claims(pp)}[r.CLAIM_PAPER_160]
    assert paper["holds"] is False
    assert "GN+PN -4.30 pp (n=1); not finished: BN, GN" in paper["detail"]
    pp["gn+pn"] = _paper_row([91.2])

    pp["bn"] = _paper_row([91.6], curve=[90.0] * 160)
    pp["gn+pn"] = _paper_row([91.2], curve=[89.0] * 120)
    pp["gn"] = _paper_row([90.9])
    claims = {c["claim"]: c for c in r.paper160_claims(pp)}
    assert claims[r.CLAIM_MATCH_160]["holds"] is False  # -0.40 < -0.3
    assert "epoch 80: -1.00, epoch 120: -1.00" in claims[r.CLAIM_MATCH_160]["detail"]
    assert claims[r.CLAIM_GN_160]["holds"] is True
    assert claims[r.CLAIM_NB2_160]["holds"] is None  # BN over 2 images has not run
    paper = claims[r.CLAIM_PAPER_160]
    assert paper["holds"] is True and paper["values"] == pytest.approx([0.0, 0.1, -0.2])
    pp["gn"] = _paper_row([90.2])
    assert not {c["claim"]: c for c in r.paper160_claims(pp)}[r.CLAIM_PAPER_160]["holds"]
    assert "(one seed of GN+PN and BN: not conclusive)" in claims[r.CLAIM_MATCH_160]["detail"]
    two = {**pp, "gn+pn": _paper_row([91.2, 91.2])}
    assert "(one seed of BN: not conclusive)" in r.paper160_claims(two)[0]["detail"]
    answer = r.short_answer(r.paper160_claims(pp))  # one seed a side: said as not conclusive
    assert "misses its margin so far" in answer and "not conclusive" in answer
    assert "At the paper's protocol GN+PN is ahead of GN so far" in answer
    pp["bn"], pp["gn+pn"] = _paper_row([91.6, 91.6]), _paper_row([91.2, 91.2])
    assert "does **not** hold" in r.short_answer(r.paper160_claims(pp))
