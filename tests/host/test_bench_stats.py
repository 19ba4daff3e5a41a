"""Statistics and target evaluation of the benchmark (tools/benchmarks/stats.py)."""

import pytest

from benchmarks import stats as st


def test_median():
    assert st.median([]) is None
    assert st.median([None, None]) is None
    assert st.median([3]) == 3
    assert st.median([5, 1, 3]) == 3
    assert st.median([4, 1, 3, 2]) == 2.5
    assert st.median([1, None, 7, 3]) == 3


def test_percentile_linear_interpolation():
    xs = list(range(1, 101))  # 1..100
    assert st.percentile(xs, 0) == 1
    assert st.percentile(xs, 100) == 100
    assert st.percentile(xs, 50) == pytest.approx(50.5)
    assert st.percentile(xs, 99) == pytest.approx(99.01)
    assert st.percentile([10, 20], 25) == pytest.approx(12.5)
    assert st.percentile([7], 99) == 7
    assert st.percentile([], 50) is None
    assert st.percentile([3, 1, 2], 50) == 2  # unsorted input
    with pytest.raises(ValueError):
        st.percentile([1], 101)


def test_ratio():
    assert st.ratio(10, 4) == 2.5
    assert st.ratio(None, 4) is None
    assert st.ratio(1, None) is None
    assert st.ratio(1, 0) is None


def test_medians_of_runs():
    runs = [
        {"scenario": "s", "broker": "a", "metrics": {"x": 1, "y": None, "flag": True}},
        {"scenario": "s", "broker": "a", "metrics": {"x": 5}},
        {"scenario": "s", "broker": "a", "metrics": {"x": 3}},
        {"scenario": "s", "broker": "b", "metrics": {"x": 10}},
        {"scenario": "t", "broker": "b", "metrics": {}},
    ]
    med = st.medians_of(runs)
    assert med == {"s": {"x": {"a": 3, "b": 10}}}


def _medians(fanin_mp, fanin_mosq, qos1, p50_mp, p50_mosq, heap, ret_mp, ret_mosq):
    return {
        "qos0_fanin": {"delivered_per_s": {"micropython": fanin_mp, "mosquitto": fanin_mosq}},
        "qos1_window": {"msgs_per_s": {"micropython": qos1}},
        "pingpong": {"p50_us": {"micropython": p50_mp, "mosquitto": p50_mosq}},
        "conn_scaling": {"heap_per_client_bytes": {"micropython": heap}},
        "retained": {"all_arrived_ms": {"micropython": ret_mp, "mosquitto": ret_mosq}},
    }


def test_targets_all_met():
    res = st.evaluate_targets(_medians(60000, 200000, 25000, 150, 100, 900, 20, 10))
    assert [t["id"] for t in res] == ["fanin_abs", "fanin_rel", "qos1_abs", "pingpong_rel",
                                      "idle_heap", "retained_rel"]
    assert all(t["met"] for t in res), res
    by = {t["id"]: t for t in res}
    assert by["fanin_rel"]["threshold"] == 50000
    assert by["pingpong_rel"]["threshold"] == 200
    assert by["retained_rel"]["threshold"] == 30
    assert by["fanin_abs"]["margin"] == pytest.approx(1.2)


def test_targets_missed_and_boundaries():
    res = {t["id"]: t for t in st.evaluate_targets(
        _medians(49999, 400000, 20000, 201, 100, 1000, 31, 10))}
    assert res["fanin_abs"]["met"] is False
    assert res["fanin_rel"]["met"] is False        # 49,999 < 100,000
    assert res["qos1_abs"]["met"] is True          # boundary: >= 20,000
    assert res["pingpong_rel"]["met"] is False     # 201 > 2 x 100
    assert res["idle_heap"]["met"] is True         # boundary: <= 1,000
    assert res["retained_rel"]["met"] is False     # 31 > 3 x 10
    assert res["pingpong_rel"]["margin"] == pytest.approx(1.005)


def test_targets_missing_figures_are_not_judged():
    res = st.evaluate_targets({"qos0_fanin": {"delivered_per_s": {"micropython": 70000}}})
    by = {t["id"]: t for t in res}
    assert by["fanin_abs"]["met"] is True
    assert by["fanin_rel"]["met"] is None          # no mosquitto figure
    assert by["qos1_abs"]["met"] is None and by["qos1_abs"]["value"] is None


def test_targets_other_reference():
    med = {"pingpong": {"p50_us": {"micropython": 300, "mosquitto": 200, "mosquitto_nodelay": 100}}}
    a = {t["id"]: t for t in st.evaluate_targets(med)}
    b = {t["id"]: t for t in st.evaluate_targets(med, ref="mosquitto_nodelay")}
    assert a["pingpong_rel"]["met"] is True
    assert b["pingpong_rel"]["met"] is False


def test_formatting():
    assert st.fmt_num(None) == "-"
    assert st.fmt_num(123456.7) == "123,457"
    assert st.fmt_num(42.25) == "42.2" or st.fmt_num(42.25) == "42.3"
    assert st.fmt_num(1.234) == "1.23"
    assert st.fmt_ratio(None) == "-"
    assert st.fmt_ratio(0.256) == "0.26"
    t = st.format_table(["a", "bb"], [["x", "1"], ["yyy", "22"]]).splitlines()
    assert t[0].split() == ["a", "bb"] and t[3].split() == ["yyy", "22"]
    md = st.format_markdown(["a", "b"], [["x", "1"]]).splitlines()
    assert md == ["| a | b |", "| --- | ---: |", "| x | 1 |"]
