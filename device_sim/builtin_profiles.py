"""The built-in profiles. Anomaly rates are set but disabled: ``--anomalies`` switches them on."""

from __future__ import annotations

from typing import Any

from device_sim.profiles import Profile

_ANOMALIES: dict[str, Any] = {
    "enabled": False,
    "spike_rate": 0.005,
    "drift_rate": 0.001,
    "stuck_rate": 0.002,
    "dropout_rate": 0.002,
    "garbage_rate": 0.002,
}

_RAW: dict[str, dict[str, Any]] = {
    "room": {
        "description": "Office or home room: temperature with a daily cycle, humidity, CO2.",
        "metrics": {
            "temperature": {"unit": "°C", "base": 21.5, "signal": "sine", "amplitude": 1.5,
                            "period_s": 86400, "noise": 0.05, "min": -10, "max": 50, "resolution": 0.01},
            "humidity": {"unit": "%RH", "base": 45, "signal": "walk", "step": 0.2, "noise": 0.1,
                         "min": 0, "max": 100, "resolution": 0.1},
            "co2": {"unit": "ppm", "base": 600, "signal": "walk", "step": 5, "noise": 2,
                    "min": 350, "max": 5000, "resolution": 1},
        },
        "events": [{"name": "low_battery", "rate": 0.0005, "detail": {"battery_pct": 9}}],
    },
    "freezer": {
        "description": "Cold-chain freezer: compressor cycle around -18 °C, door contact, battery.",
        "metrics": {
            "temperature": {"unit": "°C", "base": -18, "signal": "sine", "amplitude": 1.2,
                            "period_s": 1800, "noise": 0.05, "min": -40, "max": 10, "resolution": 0.01},
            "battery": {"unit": "%", "base": 95, "signal": "walk", "step": 0.02, "reversion": 0.001,
                        "min": 0, "max": 100, "resolution": 1},
        },
        "events": [{"name": "door_open", "rate": 0.002, "detail": "door contact opened"},
                   {"name": "low_battery", "rate": 0.0005, "detail": {"battery_pct": 9}}],
    },
    "motor": {
        "description": "Electric motor: vibration RMS, phase current, winding temperature, speed.",
        "metrics": {
            "vibration": {"unit": "mm/s", "base": 2.8, "signal": "walk", "step": 0.05, "noise": 0.1,
                          "min": 0, "max": 50, "resolution": 0.01},
            "current": {"unit": "A", "base": 12, "signal": "sine", "amplitude": 1.5, "period_s": 600,
                        "noise": 0.2, "min": 0, "max": 100, "resolution": 0.01},
            "temperature": {"unit": "°C", "base": 55, "signal": "walk", "step": 0.1, "noise": 0.05,
                            "min": -20, "max": 150, "resolution": 0.1},
            "rpm": {"unit": "rpm", "base": 1480, "signal": "walk", "step": 2, "noise": 1,
                    "min": 0, "max": 3600, "resolution": 1},
        },
        "events": [{"name": "overload", "rate": 0.0005, "detail": "current above rated value"}],
    },
    "power": {
        "description": "Three-phase power meter: voltage, current, active power, energy counter.",
        "metrics": {
            "voltage": {"unit": "V", "base": 230, "signal": "walk", "step": 0.3, "noise": 0.2,
                        "min": 0, "max": 300, "resolution": 0.1},
            "current": {"unit": "A", "base": 8, "signal": "sine", "amplitude": 4, "period_s": 3600,
                        "noise": 0.1, "min": 0, "max": 63, "resolution": 0.01},
            "power": {"unit": "W", "base": 1800, "signal": "sine", "amplitude": 900, "period_s": 3600,
                      "noise": 20, "min": 0, "max": 40000, "resolution": 1},
            "energy": {"unit": "kWh", "base": 1000, "signal": "counter", "step": 0.0005,
                       "min": 0, "max": 1000000, "resolution": 0.001},
        },
        "events": [{"name": "power_failure", "rate": 0.0002, "detail": "supply voltage lost"}],
    },
    "gps": {
        "description": "Vehicle GPS tracker: position, speed, heading, satellites, battery.",
        "metrics": {
            "lat": {"unit": "deg", "base": 52.52, "signal": "walk", "step": 0.0002, "reversion": 0.001,
                    "min": 52.3, "max": 52.7, "resolution": 0.000001},
            "lon": {"unit": "deg", "base": 13.405, "signal": "walk", "step": 0.0003, "reversion": 0.001,
                    "min": 13.1, "max": 13.7, "resolution": 0.000001},
            "speed": {"unit": "km/h", "base": 40, "signal": "walk", "step": 3, "noise": 0.5,
                      "min": 0, "max": 200, "resolution": 0.1},
            "heading": {"unit": "deg", "base": 180, "signal": "walk", "step": 5, "reversion": 0,
                        "min": 0, "max": 359.9, "resolution": 0.1},
            "satellites": {"unit": "", "base": 9, "signal": "walk", "step": 0.3,
                           "min": 0, "max": 24, "resolution": 1},
            "battery": {"unit": "%", "base": 80, "signal": "walk", "step": 0.05, "reversion": 0.001,
                        "min": 0, "max": 100, "resolution": 1},
        },
        "events": [{"name": "low_battery", "rate": 0.0005, "detail": {"battery_pct": 9}},
                   {"name": "geofence_exit", "rate": 0.001, "detail": "left depot area"}],
    },
}


def _build() -> dict[str, Profile]:
    profiles = {}
    for name, raw in _RAW.items():
        profiles[name] = Profile.model_validate({"name": name, "anomalies": _ANOMALIES, **raw})
    return profiles


BUILTIN_PROFILES: dict[str, Profile] = _build()
DEFAULT_PROFILE = "room"
