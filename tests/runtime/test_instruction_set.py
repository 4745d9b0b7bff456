"""Which int8 files overflow which CPU's int8 kernels (featx.runtime.instruction_set)."""

from __future__ import annotations

import pytest

from featx.runtime.errors import FeatxError
from featx.runtime.instruction_set import (
    INSTRUCTION_SETS,
    check_int8_runs_here,
    cpu_instruction_set,
    overflows_here,
)

FULL_RANGE = {"activations": "uint8", "weights": "int8", "reduce_range": False}


def test_this_cpu_has_one_of_the_known_instruction_sets():
    assert cpu_instruction_set() in INSTRUCTION_SETS


@pytest.mark.parametrize(
    ("recipe", "instruction_set", "overflows"),
    [
        (FULL_RANGE, "x86-avx2", True),
        (FULL_RANGE, "x86", True),
        (FULL_RANGE, "x86-vnni", False),
        (FULL_RANGE, "arm", False),
        ({**FULL_RANGE, "reduce_range": True}, "x86-avx2", False),
        ({**FULL_RANGE, "weights": "uint8"}, "x86-avx2", False),
        ({**FULL_RANGE, "activations": "int8"}, "x86-avx2", False),
    ],
)
def test_only_full_range_u8_s8_weights_overflow_and_only_without_vnni(
    recipe, instruction_set, overflows
):
    assert overflows_here(recipe, instruction_set) is overflows


def test_the_check_names_the_file_and_the_way_out(monkeypatch):
    monkeypatch.setattr("featx.runtime.instruction_set.cpu_instruction_set", lambda: "x86-avx2")
    with pytest.raises(FeatxError, match=r"m\.onnx is an int8 model made for x86-vnni CPUs"):
        check_int8_runs_here({"recipe": {**FULL_RANGE, "instruction_set": "x86-vnni"}}, "m.onnx")
    check_int8_runs_here({}, "fp32.onnx")
    check_int8_runs_here({"recipe": {**FULL_RANGE, "reduce_range": True}}, "avx2.onnx")
