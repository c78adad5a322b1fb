"""Kubernetes quantities: parsed like Kubernetes, exact sums for ping, memory shown like the kubelet."""

from __future__ import annotations

from fractions import Fraction

import pytest

from kod import errors, quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", 0.5), ("2", 2), ("1.5", 1.5), ("128Mi", 128 * 2**20), ("1G", 10**9), ("1e3", 1000), ("1Ki", 1024),
     (".5", 0.5), ("100u", 0.0001), (3, 3)],
)
def test_quantities_parse_like_kubernetes(text, value) -> None:
    assert float(quantity.parse(text)) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "1Mb", "abc", "1.2.3", "Gi", "--1"])
def test_malformed_quantities_are_refused(bad) -> None:
    with pytest.raises(errors.InvalidInput):
        quantity.parse(bad)


def test_memory_is_reported_in_ki_like_the_kubelet() -> None:
    assert quantity.format_bytes(25276502016) == "24684084Ki"
    assert quantity.format_bytes(8 * 2**30) == "8Gi"
    assert quantity.to_millicores("250m") == 250 and quantity.to_bytes("1.5Ki") == 1536


@pytest.mark.parametrize(
    ("inputs", "total"),
    [
        (["2", "1500m"], "3500m"),
        (["4Gi", "512Mi"], "4608Mi"),
        (["1G", "500M"], "1500000000"),
        (["110", "110"], "220"),
        (["0.5", "0.25"], "750m"),
        (["1e3", "1k"], "2000"),
        (["1Ki", "1024"], "2Ki"),
    ],
)
def test_quantities_add_up_exactly(inputs: list[str], total: str) -> None:
    assert quantity.add(inputs) == total


@pytest.mark.parametrize("bad", ["", "lots", "4GB", "1..2", "Gi"])
def test_a_malformed_quantity_is_invalid_input(bad: str) -> None:
    with pytest.raises(errors.InvalidInput):
        quantity.parse(bad)


@pytest.mark.parametrize("bad", ["1e3Ki", "1.5Gie2", True, "inf", float("nan")])
def test_what_kubernetes_refuses_is_invalid_input(bad: object) -> None:
    with pytest.raises(errors.InvalidInput):
        quantity.parse(bad)  # type: ignore[arg-type]


def test_a_number_is_read_as_its_decimal_text_like_kubernetes_reads_yaml() -> None:
    assert quantity.parse(0.1) == Fraction(1, 10)
    assert quantity.to_millicores(0.1) == 100


def test_values_round_up_like_kubernetes_value_and_milli_value() -> None:
    assert quantity.milli_value(quantity.parse("1n")) == 1
    assert quantity.int_value(quantity.parse("1500m")) == 2
    assert quantity.to_bytes("0.5") == 1


def test_sums_below_a_millicore_stay_exact() -> None:
    assert quantity.add(["1n", "2n"]) == "0.000000003"
    assert quantity.add(["-1500m"]) == "-1500m"
