"""Profiles: built-ins, the TOML file format, and the readings they produce."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from device_sim.anomalies import Value
from device_sim.builtin_profiles import BUILTIN_PROFILES
from device_sim.errors import SimConfigError
from device_sim.profiles import AnomalyConfig, MetricSpec, Profile, load_profiles_file, resolve_profile
from device_sim.sampler import DeviceSampler

EXAMPLE = Path(__file__).resolve().parents[2] / "conf" / "profiles.example.toml"


def _readings(profile: Profile, seed: int | None, n: int, device_id: str = "dev-0001") -> list[dict[str, Value]]:
    sampler = DeviceSampler(profile, device_id, seed)
    return [sampler.sample(1.0).values for _ in range(n)]


def test_builtin_profiles_exist_with_anomalies_off() -> None:
    assert set(BUILTIN_PROFILES) == {"room", "freezer", "motor", "power", "gps"}
    for name, profile in BUILTIN_PROFILES.items():
        assert profile.name == name and profile.description
        assert not profile.anomalies.enabled
        assert profile.anomalies.spike_rate > 0  # ready for --anomalies


def test_same_seed_same_readings_and_other_seed_other_readings() -> None:
    for profile in BUILTIN_PROFILES.values():
        a = _readings(profile.with_anomalies(True), 7, 300)
        assert a == _readings(profile.with_anomalies(True), 7, 300)
        assert a != _readings(profile.with_anomalies(True), 8, 300)
    # devices of one run differ from each other, deterministically
    room = BUILTIN_PROFILES["room"]
    assert _readings(room, 7, 50, "dev-0001") != _readings(room, 7, 50, "dev-0002")


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_clean_readings_stay_in_range_at_resolution(name: str) -> None:
    profile = BUILTIN_PROFILES[name]
    for values in _readings(profile, 3, 3000):
        assert set(values) == set(profile.metrics)
        for metric, value in values.items():
            spec = profile.metrics[metric]
            assert isinstance(value, int | float) and math.isfinite(value)
            assert spec.min <= value <= spec.max, (metric, value)
            assert round(value, spec.decimals) == value  # rounded to the metric's decimals
            if spec.decimals == 0:
                assert isinstance(value, int)


def test_counter_signal_only_grows() -> None:
    energy = [e for v in _readings(BUILTIN_PROFILES["power"], 1, 500) if isinstance(e := v["energy"], float)]
    assert len(energy) == 500  # every value a float
    assert energy == sorted(energy) and energy[-1] > energy[0]


def _one_kind(kind: str, rate: float) -> Profile:
    base = BUILTIN_PROFILES["room"]
    fields = {"enabled": True, f"{kind}_rate": rate}
    if kind in ("drift", "stuck", "dropout"):
        fields[f"{kind}_samples"] = 1  # every hit is a single-sample episode: hits ~ Binomial(n, rate)
    return base.model_copy(update={"anomalies": AnomalyConfig(**fields)})


@pytest.mark.parametrize("kind", ["spike", "drift", "stuck", "garbage", "dropout"])
def test_anomalies_appear_at_roughly_the_configured_rate(kind: str) -> None:
    rate, samples = 0.02, 5000
    sampler = DeviceSampler(_one_kind(kind, rate), "dev-0001", seed=11)
    drawn = [sampler.sample(1.0) for _ in range(samples)]
    if kind == "dropout":
        hits, trials = sum(s.silent for s in drawn), samples
    else:
        hits = sum(1 for s in drawn for k in s.anomalies.values() if k == kind)
        trials = samples * 3
    expected = rate * trials
    sigma = math.sqrt(trials * rate * (1 - rate))
    assert abs(hits - expected) < 5 * sigma, (hits, expected)


def test_out_of_range_values_only_where_an_anomaly_was_injected() -> None:
    for profile in BUILTIN_PROFILES.values():
        noisy = profile.model_copy(update={"anomalies": profile.anomalies.model_copy(
            update={"enabled": True, "spike_rate": 0.05, "drift_rate": 0.01, "garbage_rate": 0.05})})
        sampler = DeviceSampler(noisy, "dev-0001", seed=5)
        kinds: set[str] = set()
        for _ in range(2000):
            sample = sampler.sample(1.0)
            kinds.update(sample.anomalies.values())
            for metric, value in sample.values.items():
                spec = profile.metrics[metric]
                clean = isinstance(value, int | float) and math.isfinite(value) and spec.min <= value <= spec.max
                if not clean:
                    assert metric in sample.anomalies, (profile.name, metric, value)
        assert {"spike", "drift", "garbage", "stuck", "dropout"} <= kinds


def test_garbage_includes_nan_strings_and_huge_numbers() -> None:
    sampler = DeviceSampler(_one_kind("garbage", 0.5), "dev-0001", seed=2)
    garbage = [s.values[m] for s in (sampler.sample(1.0) for _ in range(400))
               for m, k in s.anomalies.items() if k == "garbage"]
    assert any(isinstance(g, float) and math.isnan(g) for g in garbage)
    assert any(isinstance(g, str) for g in garbage)
    assert any(isinstance(g, float) and abs(g) >= 1e300 for g in garbage)


def test_stuck_repeats_the_last_value_for_its_episode() -> None:
    profile = BUILTIN_PROFILES["room"].model_copy(
        update={"anomalies": AnomalyConfig(enabled=True, stuck_rate=0.01, stuck_samples=5)})
    sampler = DeviceSampler(profile, "dev-0001", seed=4)
    samples = [sampler.sample(1.0) for _ in range(3000)]
    series = [s.values["temperature"] for s in samples]
    labels = [s.anomalies.get("temperature") for s in samples]
    starts = [i for i in range(1, len(labels)) if labels[i] == "stuck" and labels[i - 1] != "stuck"]
    assert starts
    for i in starts:
        assert series[i:i + 5] == [series[i - 1]] * 5


def test_example_profile_file_loads() -> None:
    profiles = load_profiles_file(EXAMPLE)
    assert set(profiles) == {"greenhouse", "tank"}
    greenhouse = resolve_profile(f"{EXAMPLE}#greenhouse")
    assert greenhouse.name == "greenhouse" and greenhouse.metrics["light"].decimals == 0
    assert [e.name for e in greenhouse.events] == ["low_battery", "vent_open"]
    for values in _readings(greenhouse, 1, 200):
        assert set(values) == {"temperature", "humidity", "soil_moisture", "light"}


def test_resolve_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(SimConfigError, match="unknown profile"):
        resolve_profile("nope")
    with pytest.raises(SimConfigError, match="several profiles"):
        resolve_profile(str(EXAMPLE))
    with pytest.raises(SimConfigError, match="not found"):
        resolve_profile(f"{EXAMPLE}#nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.x.metrics.t]\nbase = 5\nmin = 0\nmax = 1\n")
    with pytest.raises(SimConfigError, match="outside the valid range"):
        resolve_profile(str(bad))
    bad.write_text("[profiles.x.metrics.t]\nbase = 0.5\nmin = 0\nmax = 1\ncolour = 'red'\n")
    with pytest.raises(SimConfigError, match="colour"):
        resolve_profile(str(bad))
    bad.write_text("[profiles.x.metrics.seq]\nbase = 0.5\nmin = 0\nmax = 1\n")
    with pytest.raises(SimConfigError, match="bad metric name"):
        resolve_profile(str(bad))
    bad.write_text("not toml [")
    with pytest.raises(SimConfigError, match="not valid TOML"):
        resolve_profile(str(bad))
    single = tmp_path / "one.toml"
    single.write_text("[profiles.solo]\n[profiles.solo.metrics.t]\nbase = 0.5\nmin = 0\nmax = 1\n")
    assert resolve_profile(str(single)).name == "solo"


def test_resolution_decimals() -> None:
    def spec(res: float) -> MetricSpec:
        return MetricSpec(base=0, min=-1, max=1, resolution=res)

    assert [spec(r).decimals for r in (0.01, 0.5, 1, 10, 0.000001)] == [2, 1, 0, 0, 6]
