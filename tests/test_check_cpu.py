"""The regression gate keeps its records per CPU class: fp32 reruns repeat bitwise on one class of CPU
and not across classes (base/machine.py), so `check` compares with this class's records where the suite
has them and says so where it compares with another class's."""

import os
import subprocess
import sys

import yaml

from adamole_bench.base.machine import numerics_class
from adamole_bench.harness.check import regression
from adamole_bench.harness.check import suite as suites

KEY = {"model": "m", "method": "adamole", "task": "t", "protocol": "letter", "config_hash": "h"}
INTEL, AMD = "GenuineIntel AVX512", "AuthenticAMD AVX512"


def two_classes(tmp_path):
    """A suite recorded on two CPU classes that disagree by more than the tolerance (as ours did)."""
    path = tmp_path / "suite.yaml"
    records = [
        {**KEY, "seeds": [0, 1], "values": [1.0, 1.0], "mean": 1.0, "tolerance": 0.03, "cpu": INTEL},
        {**KEY, "seeds": [0, 1], "values": [0.9375, 1.0], "mean": 0.96875, "tolerance": 0.03, "cpu": AMD},
    ]
    recorded = {INTEL: {"at": "2026-12-03 13:04:48 UTC", "git_commit": "d6fbe8a"}, AMD: {"at": "2026-12-03 15:30:00 UTC", "git_commit": "abc1234"}}
    path.write_text(yaml.safe_dump({"config": "c.yaml", "recorded": recorded, "records": records}))
    return suites.load_suite(path)


def rerun_rows(values: list[float]) -> list[dict]:
    return [{**KEY, "seed": seed, "acc": value} for seed, value in enumerate(values)]


def test_each_cpu_class_is_compared_with_its_own_records(tmp_path):
    suite = two_classes(tmp_path)
    amd_rerun = rerun_rows([0.9375, 1.0])
    (on_amd,) = regression.compare(suite, amd_rerun, cpu=AMD)
    assert on_amd.status == "ok" and on_amd.recorded == on_amd.current == 0.96875 and on_amd.recorded_cpu is None
    (against_intel,) = regression.compare(suite, amd_rerun, cpu=INTEL)  # the same numbers where Intel's records apply
    assert against_intel.status == "regressed" and against_intel.recorded == 1.0
    lines = regression.provenance_lines(suite, [on_amd], cpu=AMD)
    assert lines[0].startswith(f"recorded numbers ({AMD}): 2026-12-03 15:30:00 UTC, git abc1234")
    assert not any(line.startswith("this CPU is") for line in lines)


def test_a_cpu_class_without_records_is_compared_with_another_and_told_so(tmp_path):
    suite = two_classes(tmp_path)
    (delta,) = regression.compare(suite, rerun_rows([1.0, 1.0]), cpu="GenuineIntel AVX2")
    assert delta.status == "ok" and delta.recorded_cpu == INTEL  # the same vendor's kernels are the nearest
    assert regression.compare(suite, rerun_rows([1.0, 1.0]), cpu="AuthenticAMD AVX2")[0].recorded_cpu == AMD
    lines = regression.provenance_lines(suite, [delta], cpu="GenuineIntel AVX2")
    assert any(line.startswith("this CPU is GenuineIntel AVX2; the suite has no records for it") and "--record" in line for line in lines)


def test_record_replaces_this_class_and_keeps_the_others(tmp_path):
    suite = two_classes(tmp_path)
    suites.record(suite, [{**row, "implementation": {"implementation": "x"}} for row in rerun_rows([0.875, 1.0])], cpu=AMD)
    document = yaml.safe_load(suite.path.read_text())
    by_cpu = {r["cpu"]: r for r in document["records"]}
    assert set(by_cpu) == {INTEL, AMD} and len(document["records"]) == 2
    assert by_cpu[INTEL]["values"] == [1.0, 1.0] and by_cpu[AMD]["values"] == [0.875, 1.0] and by_cpu[AMD]["tolerance"] == 0.03
    assert document["recorded"][INTEL]["git_commit"] == "d6fbe8a" and document["recorded"][AMD]["at"] != "2026-12-03 15:30:00 UTC"
    reloaded = suites.load_suite(suite.path)
    assert [d.status for d in regression.compare(reloaded, rerun_rows([0.875, 1.0]), cpu=AMD)] == ["ok"]


def test_a_suite_from_before_cpu_classes_still_loads(tmp_path):
    path = tmp_path / "old.yaml"
    old = {**KEY, "seeds": [0], "values": [0.5], "mean": 0.5}
    path.write_text(yaml.safe_dump({"config": "c.yaml", "recorded": {"at": "2026-11-30", "git_commit": "0ld"}, "records": [old]}))
    suite = suites.load_suite(path)
    (delta,) = regression.compare(suite, rerun_rows([0.5]), cpu=AMD)
    assert delta.status == "ok" and delta.recorded_cpu == suites.UNRECORDED_CPU
    assert (
        regression.provenance_lines(suite, [delta], cpu=AMD)[0]
        == f"recorded numbers ({suites.UNRECORDED_CPU}): 2026-11-30, git 0ld, versions unknown"
    )


def test_the_class_follows_the_instruction_set_torch_dispatches_to():
    """ATEN_CPU_CAPABILITY=avx2 is how this CPU computes like one without AVX512; its class says so."""
    probe = "from adamole_bench.base.machine import numerics_class; print(numerics_class())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    emulated = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.strip()
    vendor = numerics_class().rsplit(" ", 1)[0]
    assert emulated == f"{vendor} AVX2"
    assert numerics_class().rsplit(" ", 1)[1] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256")
