import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenred.params import (Bool, Choice, Float, Int, ParameterError, format_method_spec,
                             parse_method_spec, split_method_list, split_top_level, validate)


def test_parse_method_spec():
    assert parse_method_spec("tome") == ("tome", {})
    assert parse_method_spec("tome:r=13,prop_attn=false") == ("tome", {"r": 13, "prop_attn": False})
    assert parse_method_spec("tome:r=(13,-0.5)") == ("tome", {"r": (13, -0.5)})
    assert parse_method_spec("tome:r=[8,8,4], where=blocks:0-2") == (
        "tome", {"r": [8, 8, 4], "where": "blocks:0-2"})
    for bad, match in (("", "empty"), ("tome:r", "not key=value"), ("tome:r=1,r=2", "given twice"),
                       ("tome:r=[1,2", "unbalanced")):
        with pytest.raises(ParameterError, match=match):
            parse_method_spec(bad)


def test_split_top_level():
    assert split_top_level("none,tome:r=[1,2],random_drop:keep=0.5") == [
        "none", "tome:r=[1,2]", "random_drop:keep=0.5"]


def test_split_method_list():
    assert split_method_list("none,tome:r=13,prop_attn=false,random_drop:keep=0.5,where=[1,2]") == [
        "none", "tome:r=13,prop_attn=false", "random_drop:keep=0.5,where=[1,2]"]
    assert split_method_list("tome:where=blocks:0-3,r=2,none") == ["tome:where=blocks:0-3,r=2", "none"]
    with pytest.raises(ParameterError, match="starts with a parameter"):
        split_method_list("r=3,tome")


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                       st.one_of(st.integers(-5, 50), st.booleans(),
                                 st.lists(st.integers(0, 9), max_size=4),
                                 st.tuples(st.integers(0, 9), st.floats(-1, 1, allow_nan=False)))))
def test_spec_round_trip(params):
    name, parsed = parse_method_spec(format_method_spec("m", params))
    assert name == "m" and parsed == params


def test_validate_messages():
    table = {"n": Int(2, "n", min=0, max=5), "f": Float(0.5, "f", min=0, max=1, min_open=True),
             "b": Bool(True, "b"), "c": Choice("x", "c", ["x", "y"])}
    assert validate("m", table, {}) == {"n": 2, "f": 0.5, "b": True, "c": "x"}
    assert validate("m", table, {"n": "3", "f": "1", "b": "no", "c": "y"}) == {
        "n": 3, "f": 1.0, "b": False, "c": "y"}
    cases = [({"n": 6}, "'n' got 6; allowed: an integer in \\[0, 5\\]"),
             ({"n": 1.5}, "'n' got 1.5"),
             ({"f": 0}, "'f' got 0; allowed: a number in \\(0, 1\\]"),
             ({"b": "maybe"}, "'b' got 'maybe'; allowed: true or false"),
             ({"c": "z"}, "'c' got 'z'; allowed: one of 'x', 'y'"),
             ({"zz": 1}, "unknown parameter\\(s\\) zz; m takes: b, c, f, n")]
    for given_, match in cases:
        with pytest.raises(ParameterError, match=match):
            validate("m", table, given_)
