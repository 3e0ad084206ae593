"""Seeded generator of field-sensor series with labelled sensor faults (numpy only).

Used to pretrain the base model (normal series only), by tests and by the daemon's demo.
It never imports torch.

A *device* has one channel per sensor kind (``SENSOR_KINDS``). Each channel is

    level + seasonal cycle + diurnal cycle (kind-specific shape) + coupling to other
    channels (humidity falls when temperature rises; vibration follows motor current)
    + AR(1) noise + white noise, then quantised to the sensor's resolution and clipped to
    its physical range,

plus normal *events* (irrigation raises soil moisture then it decays; a rain shower raises
humidity; a motor start steps current and vibration; a battery is replaced). Events are
normal site behaviour and are NOT labelled as faults.

Faults (``FAULT_KINDS``) are injected on top and labelled per step and channel:

- ``stuck_at``: the reading freezes at its last value.
- ``spikes``: a burst of isolated large spikes (single steps).
- ``drift``: a slowly growing additive offset (calibration drift).
- ``dropout``: the reading falls to the sensor's floor (disconnected probe reads zero).
- ``saturation``: the reading is clipped at the sensor's upper limit.
- ``level_shift``: a sustained offset of ``3..6`` normal standard deviations in 1-3
  channels at once (for as long as the fault lasts).

Determinism: the same seed and arguments give the same arrays, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DAY_S = 86_400.0
YEAR_S = 365.25 * DAY_S

FAULT_KINDS: tuple[str, ...] = ("stuck_at", "spikes", "drift", "dropout", "saturation", "level_shift")
"""Every fault kind the generator injects; the label code of kind k is its index + 1."""


@dataclass(frozen=True)
class SensorKind:
    """Physical behaviour of one sensor kind (units in ``unit``).

    ``diurnal``: amplitude of the daily cycle; ``seasonal``: amplitude of the yearly cycle;
    ``noise``: white-noise std; ``ar_noise``: std of the AR(1) (slow wander) component;
    ``resolution``: quantisation step; ``lo``/``hi``: physical range (saturation limits).
    """

    name: str
    unit: str
    level: tuple[float, float]
    diurnal: tuple[float, float]
    seasonal: float
    noise: float
    ar_noise: float
    resolution: float
    lo: float
    hi: float


SENSOR_KINDS: dict[str, SensorKind] = {
    k.name: k
    for k in (
        SensorKind("temperature", "degC", (5.0, 30.0), (2.0, 8.0), 8.0, 0.08, 0.4, 0.1, -40.0, 85.0),
        SensorKind("humidity", "%RH", (40.0, 75.0), (5.0, 20.0), 8.0, 0.4, 1.5, 0.5, 0.0, 100.0),
        SensorKind("soil_moisture", "%VWC", (15.0, 40.0), (0.3, 1.5), 4.0, 0.15, 0.6, 0.1, 0.0, 60.0),
        SensorKind("pressure", "hPa", (990.0, 1025.0), (0.5, 1.5), 6.0, 0.1, 1.2, 0.1, 870.0, 1085.0),
        SensorKind("vibration", "mm/s", (1.0, 4.0), (0.2, 1.0), 0.0, 0.12, 0.1, 0.01, 0.0, 50.0),
        SensorKind("current", "A", (3.0, 12.0), (0.5, 3.0), 0.0, 0.1, 0.25, 0.01, 0.0, 40.0),
        SensorKind("battery", "V", (3.5, 4.1), (0.005, 0.02), 0.02, 0.003, 0.004, 0.001, 2.8, 4.2),
    )
}


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` on ``channels`` over steps ``[start, end)``."""

    kind: str
    channels: tuple[int, ...]
    start: int
    end: int
    magnitude: float = 0.0


@dataclass(frozen=True)
class Event:
    """One normal process event (not a fault): ``kind`` starting at ``start``."""

    kind: str
    channels: tuple[int, ...]
    start: int
    duration: int


@dataclass
class GeneratedSeries:
    """A generated device recording.

    ``values``: float64 ``[L, C]`` readings in physical units. ``labels``: int8 ``[L, C]``,
    0 = normal, ``k + 1`` = ``FAULT_KINDS[k]``. ``timestamps``: UNIX seconds ``[L]``.
    ``clean``: the readings before faults (same shape as ``values``).
    """

    values: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray
    kinds: tuple[str, ...]
    interval_s: float
    clean: np.ndarray
    faults: list[Fault] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def step_labels(self) -> np.ndarray:
        """bool ``[L]``: True where any channel is faulty."""
        return np.asarray(self.labels.any(axis=1))


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal std ``std`` (vectorised by a linear filter)."""
    e = rng.standard_normal(n) * std * np.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    acc = rng.standard_normal() * std
    # out[t] = phi^(t+1) * acc + sum_{s<=t} phi^(t-s) e[s], in chunks (vectorised, stable).
    chunk = 256
    pw = phi ** np.arange(chunk)
    for i in range(0, n, chunk):
        seg = e[i : i + chunk]
        m = seg.size
        # convolution of seg with phi^k gives the within-chunk sum
        conv = np.convolve(seg, pw[:m])[:m]
        out[i : i + m] = conv + acc * phi * pw[:m]
        acc = out[i + m - 1]
    return out


def _diurnal_shape(kind: str, phase_h: np.ndarray) -> np.ndarray:
    """Daily cycle in [-1, 1] by kind, ``phase_h`` = local hour of day in [0, 24)."""
    if kind in ("temperature", "battery"):
        # warmest mid-afternoon, asymmetric (fast morning rise)
        x = 2 * np.pi * (phase_h - 15.0) / 24.0
        return np.cos(x) + 0.25 * np.cos(2 * x)
    if kind == "humidity":
        return -np.cos(2 * np.pi * (phase_h - 15.0) / 24.0)
    if kind in ("current", "vibration"):
        # working hours duty cycle, smoothed
        return np.tanh(3.0 * (np.cos(2 * np.pi * (phase_h - 13.0) / 24.0) + 0.1))
    if kind == "soil_moisture":
        # evapotranspiration: slow fall during the day
        return -np.sin(2 * np.pi * (phase_h - 6.0) / 24.0)
    return np.cos(2 * np.pi * (phase_h - 4.0) / 12.0)  # pressure: semi-diurnal tide


def _clean_device(
    rng: np.random.Generator,
    length: int,
    kinds: Sequence[str],
    interval_s: float,
    start_time: float,
    with_events: bool,
) -> tuple[np.ndarray, np.ndarray, list[Event]]:
    t = start_time + np.arange(length) * interval_s
    hour = ((t % DAY_S) / 3600.0 + rng.uniform(-1.0, 1.0)) % 24.0
    season = np.cos(2 * np.pi * (t / YEAR_S - rng.uniform(0.0, 1.0)))
    weather = _ar1(rng, length, phi=float(np.exp(-interval_s / (2.0 * DAY_S))), std=1.0)
    out = np.zeros((length, len(kinds)))
    events: list[Event] = []
    temp_anom = np.zeros(length)
    motor = np.zeros(length)
    for c, kind in enumerate(kinds):
        if kind not in SENSOR_KINDS:
            raise ValueError(f"unknown sensor kind {kind!r}; known: {', '.join(SENSOR_KINDS)}")
        spec = SENSOR_KINDS[kind]
        level = rng.uniform(*spec.level)
        amp = rng.uniform(*spec.diurnal)
        diurnal = amp * _diurnal_shape(kind, hour) * (1.0 + 0.2 * weather if kind != "current" else 1.0)
        slow_phi = float(np.exp(-interval_s / (6.0 * 3600.0)))
        x = level + spec.seasonal * 0.3 * season + diurnal
        x += _ar1(rng, length, slow_phi, spec.ar_noise) + rng.standard_normal(length) * spec.noise
        if kind == "temperature":
            x += 1.5 * weather
            temp_anom = x - x.mean()
        elif kind == "humidity":
            x += -1.2 * temp_anom - 3.0 * weather
        elif kind == "pressure":
            x += 4.0 * weather
        elif kind == "battery":
            # slow discharge (0-20 mV a month), a little temperature dependency
            x += -rng.uniform(0.0, 0.02) * (t - t[0]) / (30.0 * DAY_S) + 0.004 * temp_anom
        elif kind == "current":
            motor = x - x.mean()
        elif kind == "vibration":
            x += 0.15 * motor
        out[:, c] = x
    if with_events:
        _add_events(rng, out, kinds, interval_s, events)
    for c, kind in enumerate(kinds):
        spec = SENSOR_KINDS[kind]
        out[:, c] = np.clip(np.round(out[:, c] / spec.resolution) * spec.resolution, spec.lo, spec.hi)
    return t, out, events


def _add_events(
    rng: np.random.Generator, x: np.ndarray, kinds: Sequence[str], interval_s: float, events: list[Event]
) -> None:
    length = x.shape[0]
    per_day = DAY_S / interval_s
    n_days = max(length / per_day, 1e-9)
    for c, kind in enumerate(kinds):
        if kind == "soil_moisture":
            # irrigation every ~2-4 days: fast rise, exponential decay
            n = rng.poisson(n_days / 3.0)
            for start in rng.integers(0, length, size=n):
                rise = rng.uniform(3.0, 8.0)
                tau = rng.uniform(0.5, 1.5) * per_day
                k = np.arange(length - start)
                ramp = np.minimum(1.0, k / max(1.0, 0.02 * per_day))
                x[start:, c] += rise * ramp * np.exp(-k / tau)
                events.append(Event("irrigation", (c,), int(start), int(min(length - start, 3 * tau))))
        elif kind == "humidity":
            n = rng.poisson(n_days / 5.0)
            for start in rng.integers(0, length, size=n):
                dur = int(max(2, rng.uniform(0.05, 0.3) * per_day))
                end = min(length, start + dur)
                x[start:end, c] += rng.uniform(5.0, 15.0) * np.sin(np.linspace(0, np.pi, end - start))
                events.append(Event("rain", (c,), int(start), end - start))
        elif kind == "current":
            n = rng.poisson(n_days / 2.0)
            vib = [j for j, k in enumerate(kinds) if k == "vibration"]
            for start in rng.integers(0, length, size=n):
                dur = int(max(2, rng.uniform(0.02, 0.15) * per_day))
                end = min(length, start + dur)
                step = rng.uniform(1.0, 3.0)
                x[start:end, c] += step
                for j in vib:
                    x[start:end, j] += 0.2 * step
                events.append(Event("motor_start", (c, *vib), int(start), end - start))
        elif kind == "battery" and rng.random() < 0.1 and length > 10:
            start = int(rng.integers(length // 4, length))
            x[start:, c] += 4.15 - x[start, c]
            events.append(Event("battery_replaced", (c,), start, length - start))


def _inject_fault(
    rng: np.random.Generator, x: np.ndarray, labels: np.ndarray, kinds: Sequence[str], fault: Fault, sigma: np.ndarray
) -> None:
    code = FAULT_KINDS.index(fault.kind) + 1
    s, e = fault.start, fault.end
    for c in fault.channels:
        spec = SENSOR_KINDS[kinds[c]]
        if fault.kind == "stuck_at":
            x[s:e, c] = x[max(s - 1, 0), c]
            labels[s:e, c] = code
        elif fault.kind == "spikes":
            idx = rng.choice(np.arange(s, e), size=max(1, (e - s) // 4), replace=False)
            sign = rng.choice([-1.0, 1.0], size=idx.size)
            x[idx, c] += sign * fault.magnitude * sigma[c]
            labels[idx, c] = code
        elif fault.kind == "drift":
            x[s:e, c] += np.linspace(0.0, fault.magnitude * sigma[c], e - s)
            labels[s:e, c] = code
        elif fault.kind == "dropout":
            x[s:e, c] = max(spec.lo, 0.0)
            labels[s:e, c] = code
        elif fault.kind == "saturation":
            x[s:e, c] = spec.hi
            labels[s:e, c] = code
        elif fault.kind == "level_shift":
            x[s:e, c] += fault.magnitude * sigma[c]
            labels[s:e, c] = code
        else:  # pragma: no cover - guarded by generate_device
            raise ValueError(fault.kind)
        x[:, c] = np.clip(x[:, c], spec.lo, spec.hi)


def random_faults(
    rng: np.random.Generator,
    length: int,
    n_channels: int,
    n_faults: int,
    kinds: Sequence[str] = FAULT_KINDS,
    min_len: int = 8,
    max_len: int = 96,
    not_before: int = 0,
) -> list[Fault]:
    """Draw ``n_faults`` non-overlapping faults in steps ``[not_before, length)``."""
    faults: list[Fault] = []
    busy = np.zeros(length, dtype=bool)
    tries = 0
    while len(faults) < n_faults and tries < 50 * max(1, n_faults):
        tries += 1
        kind = str(rng.choice(list(kinds)))
        dur = int(rng.integers(min_len, max_len + 1))
        if not_before + dur >= length:
            break
        start = int(rng.integers(not_before, length - dur))
        if busy[max(0, start - min_len) : start + dur + min_len].any():
            continue
        busy[start : start + dur] = True
        n_ch = int(rng.integers(1, min(3, n_channels) + 1)) if kind == "level_shift" else 1
        chans = tuple(int(c) for c in sorted(rng.choice(n_channels, size=n_ch, replace=False)))
        mag = {"level_shift": rng.uniform(3.0, 6.0), "spikes": rng.uniform(5.0, 10.0), "drift": rng.uniform(3.0, 6.0)}
        magnitude = float(mag.get(kind, 0.0)) * (1.0 if kind != "level_shift" else float(rng.choice([-1.0, 1.0])))
        faults.append(Fault(kind, chans, start, start + dur, magnitude))
    return sorted(faults, key=lambda f: f.start)


def generate_device(
    seed: int,
    length: int,
    kinds: Sequence[str] = ("temperature", "humidity"),
    interval_s: float = 600.0,
    n_faults: int = 0,
    fault_kinds: Sequence[str] = FAULT_KINDS,
    faults: Sequence[Fault] | None = None,
    events: bool = True,
    start_time: float = 1_700_000_000.0,
    fault_free_prefix: int = 0,
) -> GeneratedSeries:
    """Generate one device recording.

    ``n_faults`` random faults of ``fault_kinds`` are drawn after ``fault_free_prefix``
    steps (the calibration stretch), or ``faults`` gives them explicitly (``magnitude`` in
    units of the channel's normal std for level_shift/drift/spikes).
    """
    if length < 2:
        raise ValueError("length must be >= 2")
    for k in fault_kinds:
        if k not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {k!r}; known: {', '.join(FAULT_KINDS)}")
    rng = np.random.default_rng(seed)
    t, clean, evs = _clean_device(rng, length, kinds, interval_s, start_time, events)
    x = clean.copy()
    labels = np.zeros(x.shape, dtype=np.int8)
    sigma = np.maximum(clean.std(axis=0), np.array([SENSOR_KINDS[k].resolution for k in kinds]))
    if faults is None:
        faults = random_faults(rng, length, len(kinds), n_faults, fault_kinds, not_before=fault_free_prefix)
    for f in faults:
        if f.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {f.kind!r}")
        if not (0 <= f.start < f.end <= length) or any(not 0 <= c < len(kinds) for c in f.channels):
            raise ValueError(f"fault out of range: {f}")
        _inject_fault(rng, x, labels, kinds, f, sigma)
    return GeneratedSeries(x, labels, t, tuple(kinds), float(interval_s), clean, list(faults), evs)


INTERVALS_S: tuple[float, ...] = (60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)


def random_device(seed: int, length: int, n_faults: int = 0, fault_free_prefix: int = 0) -> GeneratedSeries:
    """A device with 1-7 random sensor kinds and a random sampling interval from ``INTERVALS_S``."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, len(SENSOR_KINDS) + 1))
    kinds = tuple(str(k) for k in rng.choice(list(SENSOR_KINDS), size=n, replace=False))
    interval = float(rng.choice(INTERVALS_S))
    return generate_device(
        seed=int(rng.integers(0, 2**31)),
        length=length,
        kinds=kinds,
        interval_s=interval,
        n_faults=n_faults,
        fault_free_prefix=fault_free_prefix,
    )


def standardize_series(values: np.ndarray, calibration_steps: int | None = None) -> np.ndarray:
    """Standardise each channel with the mean/std of its first ``calibration_steps`` rows
    (all rows when None), the same per-device calibration the gateway applies. float32."""
    ref = values if calibration_steps is None else values[:calibration_steps]
    mean = ref.mean(axis=0)
    std = ref.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    return ((values - mean) / std).astype(np.float32)


def normal_windows(seed: int, n_windows: int, window_length: int, series_length: int = 2016) -> np.ndarray:
    """``n_windows`` single-channel windows ``[n, T]`` (float32) cut from fault-free random
    devices, each channel standardised over its whole series (per-device calibration)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_windows, window_length), dtype=np.float32)
    filled = 0
    while filled < n_windows:
        dev = random_device(int(rng.integers(0, 2**31)), series_length)
        z = standardize_series(dev.values)
        per_channel = max(1, min(64, n_windows - filled) // z.shape[1])
        for c in range(z.shape[1]):
            starts = rng.integers(0, series_length - window_length + 1, size=per_channel)
            take = min(per_channel, n_windows - filled)
            idx = starts[:take, None] + np.arange(window_length)[None, :]
            out[filled : filled + take] = z[idx, c]
            filled += take
            if filled >= n_windows:
                break
    return out
