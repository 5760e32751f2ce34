"""Delay schedules: reproducibility, per-kind statistics, validation, injection."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bls_dlrm.delays import KINDS, MODES, DelaySpec, cpu_work, inject, resolve_factor, sleep_for


def spec_of(kind: str, tmp_path=None, **kwargs) -> DelaySpec:
    """A valid spec of each kind, so generic tests can loop over all of them."""
    base = {"kind": kind, "size_s": 0.25, "seed": 7}
    if kind == "heterogeneous":
        base["factors"] = [1.0, 1.5, 2.0, 3.0]
    if kind == "random":
        base["p"] = 0.3
        base["distribution"] = "exponential"
    if kind == "trace":
        path = tmp_path / "trace.npy"
        np.save(path, np.arange(12, dtype=np.float64).reshape(4, 3) / 10.0)
        base["path"] = str(path)
    return DelaySpec(**(base | kwargs))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_gives_float64_matrix_of_the_right_shape(kind, tmp_path):
    d = spec_of(kind, tmp_path).schedule(4, 50)
    assert d.shape == (4, 50)
    assert d.dtype == np.float64
    assert np.all(np.isfinite(d))
    assert np.all(d >= 0)


@pytest.mark.parametrize("kind", KINDS)
def test_same_spec_same_schedule(kind, tmp_path):
    # Two independently built specs stand for two ranks computing the schedule on their own.
    a = spec_of(kind, tmp_path).schedule(4, 64)
    b = DelaySpec.from_dict(spec_of(kind, tmp_path).to_dict()).schedule(4, 64)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["random", "rotating"])
def test_different_seeds_differ(kind, tmp_path):
    a = spec_of(kind, tmp_path, seed=1).schedule(4, 200)
    b = spec_of(kind, tmp_path, seed=2).schedule(4, 200)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_longer_run_extends_shorter_run(kind, tmp_path):
    spec = spec_of(kind, tmp_path)
    np.testing.assert_array_equal(spec.schedule(4, 100)[:, :40], spec.schedule(4, 40))


def test_zero_iterations():
    assert DelaySpec(kind="rotating", size_s=1.0).schedule(3, 0).shape == (3, 0)


def test_none_is_zero():
    assert not DelaySpec().schedule(3, 10).any()


def test_straggler_default_is_last_rank():
    d = DelaySpec(kind="straggler", size_s=0.5).schedule(4, 10)
    assert np.all(d[3] == 0.5)
    assert not d[:3].any()


def test_straggler_given_ranks():
    d = DelaySpec(kind="straggler", size_s=0.5, ranks=[0, 2]).schedule(4, 10)
    np.testing.assert_array_equal(d.any(axis=1), [True, False, True, False])


def test_rotating_has_exactly_one_delay_per_iteration():
    d = DelaySpec(kind="rotating", size_s=2.5, seed=3).schedule(4, 4000)
    assert np.all((d > 0).sum(axis=0) == 1)
    assert set(np.unique(d)) == {0.0, 2.5}
    # Uniform choice of rank: each rank gets about a quarter of the delays.
    share = (d > 0).sum(axis=1) / 4000
    np.testing.assert_allclose(share, 0.25, atol=0.03)


def test_random_constant_frequency():
    d = DelaySpec(kind="random", size_s=0.1, p=0.2, seed=5).schedule(8, 5000)
    assert set(np.unique(d)) == {0.0, 0.1}
    assert abs((d > 0).mean() - 0.2) < 0.01


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_random_edge_probabilities(p):
    d = DelaySpec(kind="random", size_s=0.1, p=p).schedule(4, 100)
    assert np.all(d == (0.1 if p == 1.0 else 0.0))


def test_random_exponential_mean():
    d = DelaySpec(kind="random", size_s=0.2, p=1.0, distribution="exponential").schedule(10, 20000)
    assert abs(d.mean() - 0.2) < 0.2 * 0.02


def test_random_lognormal_median():
    spec = DelaySpec(kind="random", size_s=0.3, p=1.0, distribution="lognormal", sigma=0.8)
    d = spec.schedule(10, 20000)
    assert abs(np.median(d) - 0.3) < 0.3 * 0.03
    assert np.all(d > 0)


def test_random_lognormal_zero_size_is_zero():
    d = DelaySpec(kind="random", size_s=0.0, p=1.0, distribution="lognormal").schedule(3, 10)
    assert not d.any()


def test_heterogeneous_delay_is_extra_work_of_slow_ranks():
    d = DelaySpec(kind="heterogeneous", size_s=0.5, factors=[1.0, 2.0, 1.5]).schedule(3, 4)
    np.testing.assert_allclose(d, np.array([[0.0], [0.5], [0.25]]) * np.ones((1, 4)))


def test_trace_npy_round_trip_tiles_and_truncates(tmp_path):
    m = np.array([[0.1, 0.2, 0.3], [0.0, 0.5, 0.0]])
    path = tmp_path / "t.npy"
    np.save(path, m)
    spec = DelaySpec(kind="trace", path=str(path))
    np.testing.assert_array_equal(spec.schedule(2, 3), m)
    np.testing.assert_array_equal(spec.schedule(2, 2), m[:, :2])
    np.testing.assert_array_equal(spec.schedule(2, 7), np.concatenate([m, m, m[:, :1]], axis=1))


def test_trace_csv_round_trip(tmp_path):
    m = np.array([[0.125, 0.0, 1.5, 0.25], [0.5, 0.75, 0.0, 2.0], [0.0, 0.0, 0.0, 1e-3]])
    path = tmp_path / "t.csv"
    np.savetxt(path, m, delimiter=",", header="seconds, one row per rank")
    np.testing.assert_array_equal(DelaySpec(kind="trace", path=path).schedule(3, 4), m)


def test_trace_rank_mismatch(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"path.*2 ranks.*4"):
        DelaySpec(kind="trace", path=str(path)).schedule(4, 5)


def test_trace_missing_file(tmp_path):
    spec = DelaySpec(kind="trace", path=str(tmp_path / "absent.npy"))
    with pytest.raises(ValueError, match=r"path.*does not exist"):
        spec.schedule(2, 3)


@pytest.mark.parametrize(
    ("content", "match"), [("1,2\n1,nan\n", "finite"), ("1,-2\n", ">= 0"), ("1,x\n", "read")]
)
def test_trace_bad_content(tmp_path, content, match):
    path = tmp_path / "t.csv"
    path.write_text(content)
    spec = DelaySpec(kind="trace", path=str(path))
    with pytest.raises(ValueError, match=match):
        spec.schedule(content.count("\n"), 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "sometimes"}, "kind"),
        ({"kind": "straggler", "size_s": -1.0}, "size_s"),
        ({"kind": "straggler", "size_s": float("nan")}, "size_s"),
        ({"kind": "random", "p": 1.5}, "p"),
        ({"kind": "random", "p": -0.1}, "p"),
        ({"kind": "random", "distribution": "pareto"}, "distribution"),
        ({"kind": "random", "sigma": -1.0}, "sigma"),
        ({"kind": "straggler", "ranks": [-1]}, "ranks"),
        ({"kind": "heterogeneous", "factors": [1.0, 0.5]}, "factors"),
        ({"kind": "heterogeneous"}, "factors"),
        ({"kind": "trace"}, "path"),
        ({"seed": -3}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DelaySpec(**kwargs)


def test_straggler_rank_out_of_range():
    with pytest.raises(ValueError, match=r"ranks.*out of range"):
        DelaySpec(kind="straggler", size_s=1.0, ranks=[4]).schedule(4, 3)


def test_factors_length_mismatch():
    with pytest.raises(ValueError, match="factors"):
        DelaySpec(kind="heterogeneous", size_s=1.0, factors=[1.0, 2.0]).schedule(3, 3)


@pytest.mark.parametrize(("ranks", "iterations"), [(0, 3), (2, -1), (2.0, 3)])
def test_bad_schedule_shape(ranks, iterations):
    with pytest.raises(ValueError, match=r"ranks|iterations"):
        DelaySpec().schedule(ranks, iterations)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="prob"):
        DelaySpec.from_dict({"kind": "random", "prob": 0.5})


@pytest.mark.parametrize("kind", KINDS)
def test_dict_round_trip_through_json(kind, tmp_path):
    spec = spec_of(kind, tmp_path, ranks=[1, 3])
    data = json.loads(json.dumps(spec.to_dict()))
    assert DelaySpec.from_dict(data) == spec
    assert hash(DelaySpec.from_dict(data)) == hash(spec)


def test_from_dict_defaults():
    assert DelaySpec.from_dict({}) == DelaySpec()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seconds", [0.003, 0.04])
def test_inject_takes_at_least_the_delay_by_the_wall_clock(mode, seconds):
    """Measured around the call, not the value the injector reports about itself."""
    begin = time.monotonic()
    reported = inject(seconds, mode)
    elapsed = time.monotonic() - begin
    assert elapsed >= seconds
    assert seconds <= reported <= elapsed


def test_busy_delay_is_work_on_this_core_and_sleep_is_not():
    # CPU time of this thread: a busy delay computes, a sleeping one does not. On a shared
    # machine the busy share can fall well below 1, hence the loose bound.
    cpu = time.thread_time()
    wall = time.monotonic()
    inject(0.1, "busy")
    busy_cpu, busy_wall = time.thread_time() - cpu, time.monotonic() - wall
    assert busy_cpu >= 0.2 * busy_wall
    cpu = time.thread_time()
    inject(0.1, "sleep")
    assert time.thread_time() - cpu < 0.02


def test_mode_defaults_to_busy_and_is_checked():
    assert DelaySpec().mode == "busy"
    assert DelaySpec.from_dict({"kind": "rotating", "mode": "sleep"}).mode == "sleep"
    with pytest.raises(ValueError, match="mode must be one of busy, sleep"):
        DelaySpec(mode="spin")
    with pytest.raises(ValueError, match="mode"):
        inject(0.01, "spin")


def test_inject_zero_and_bad_input():
    for mode in MODES:
        assert inject(0.0, mode) == 0.0
        with pytest.raises(ValueError, match="seconds"):
            inject(-0.1, mode)


def test_cpu_work_and_sleep_run_at_least_the_request():
    for fn in (cpu_work, sleep_for):
        begin = time.monotonic()
        assert fn(0.02) >= 0.02
        assert time.monotonic() - begin >= 0.02


def test_resolve_factor_turns_a_multiple_of_the_work_into_seconds():
    """Config delays given as `factor` x work_s become `size_s` (to the ns), seeded."""
    rotating = {"kind": "rotating", "factor": 2.5}
    assert resolve_factor(rotating, 0.004, 3) == {"kind": "rotating", "size_s": 0.01, "seed": 3}
    random = {"kind": "random", "p": 0.25, "distribution": "exponential", "size_s": 0.002}
    assert resolve_factor(random, 0.004, 0) == random | {"seed": 0}  # seconds stay as given
    assert resolve_factor({"kind": "none"}, 0.004, 1) == {"kind": "none", "seed": 1}
    assert rotating == {"kind": "rotating", "factor": 2.5}  # the config is not changed
    DelaySpec.from_dict(resolve_factor(rotating, 0.004, 3))  # a valid schedule
