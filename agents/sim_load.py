"""A utilisation curve for simulated cards (`suanli-agent --simulate N --load-curve SPEC`): the utilisation a busy
card reads, as a function of the seconds since the curve was loaded.

SPEC is points `SECONDS:PERCENT` separated by commas, whitespace or new lines, seconds strictly increasing from 0 or
more, percentages from 0 to 100; between two points the utilisation is linear, before the first it is the first
point's and after the last the last point's, unless the word `repeat` is among the points: then the curve starts again
at the last point's time (which must be above 0). `#` starts a comment to the end of its line. Examples:

    0:20,300:95,900:95,1200:10         warm up over 5 minutes, hold 95 % for 10, then fall to 10 % over 5 and stay
    0:90,60:90,61:10,120:10,repeat     a minute busy, a minute quiet, over and over

SPEC may instead name a file holding the same text, or JSON: a list of `[seconds, percent]` pairs or
`{"points": [[s, p], ...], "repeat": true}`. The file is looked at again once a second: when it changes, the new curve
applies from that moment (its second 0 is when it was read), so a test or a demo can steer a running agent's load;
a file that cannot be read or parsed any more keeps the curve it had, with a warning in the log.

Which cards follow the curve is the simulator's business (`agents.sim_cards.SimulatedCards.utilization`): those running
a workload when a workload runtime is attached, otherwise every card.
"""

from __future__ import annotations

import json
import logging
import os
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("suanli.agent.simulate")

MAX_POINTS = 10_000
MAX_FILE_BYTES = 1 << 20


class LoadCurveError(ValueError):
    """A curve that cannot be read: the message says what is wrong and the grammar."""


GRAMMAR = "points SECONDS:PERCENT separated by commas (e.g. 0:20,300:95,900:95,1200:10), optionally 'repeat'"


@dataclass(frozen=True)
class LoadCurve:
    times: tuple[float, ...]
    values: tuple[float, ...]
    repeat: bool = False

    def __post_init__(self) -> None:
        if not self.times or len(self.times) != len(self.values):
            raise LoadCurveError(f"a load curve needs at least one point: {GRAMMAR}")
        if len(self.times) > MAX_POINTS:
            raise LoadCurveError(f"a load curve has at most {MAX_POINTS} points")
        for t, value in zip(self.times, self.values, strict=True):
            if not (t == t and value == value) or t in (float("inf"), float("-inf")):  # NaN or infinite
                raise LoadCurveError(f"{t}:{value} is not a point of numbers")
            if t < 0:
                raise LoadCurveError(f"{t:g}:{value:g}: seconds must be 0 or more")
            if not 0 <= value <= 100:
                raise LoadCurveError(f"{t:g}:{value:g}: utilisation must be from 0 to 100 %")
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise LoadCurveError("the seconds of a load curve must increase from one point to the next")
        if self.repeat and self.times[-1] <= 0:
            raise LoadCurveError("a repeating load curve needs a last point after second 0 (its period)")

    def at(self, elapsed: float) -> float:
        """The utilisation (%) `elapsed` seconds after the curve began."""
        if self.repeat:
            elapsed %= self.times[-1]
        i = bisect_right(self.times, elapsed)
        if i == 0:
            return self.values[0]
        if i == len(self.times):
            return self.values[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        v0, v1 = self.values[i - 1], self.values[i]
        return v0 + (v1 - v0) * (elapsed - t0) / (t1 - t0)

    def describe(self) -> str:
        text = ",".join(f"{t:g}:{v:g}" for t, v in zip(self.times, self.values, strict=True))
        return text + (",repeat" if self.repeat else "")


def _number(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LoadCurveError(f"{item!r} is not SECONDS:PERCENT ({GRAMMAR})") from None
    return value


def parse_curve_text(text: str) -> LoadCurve:
    """A curve from its text form (see the module's docstring)."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    items = [item for line in lines for item in line.replace(",", " ").split()]
    times: list[float] = []
    values: list[float] = []
    repeat = False
    for item in items:
        if item.lower() == "repeat":
            repeat = True
            continue
        if item.count(":") != 1:
            raise LoadCurveError(f"{item!r} is not SECONDS:PERCENT ({GRAMMAR})")
        seconds, percent = item.split(":")
        times.append(_number(seconds, item))
        values.append(_number(percent.rstrip("%"), item))
    return LoadCurve(tuple(times), tuple(values), repeat)


def parse_curve_json(data: object) -> LoadCurve:
    repeat = False
    if isinstance(data, dict):
        repeat = data.get("repeat", False)
        if not isinstance(repeat, bool):
            raise LoadCurveError("'repeat' must be true or false")
        data = data.get("points")
    if not isinstance(data, list):
        raise LoadCurveError('a JSON load curve is a list of [seconds, percent] pairs or {"points": [...]}')
    times: list[float] = []
    values: list[float] = []
    for point in data:
        if (
            not isinstance(point, list | tuple)
            or len(point) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in point)
        ):
            raise LoadCurveError(f"{json.dumps(point)[:60]} is not a [seconds, percent] pair of numbers")
        times.append(float(point[0]))
        values.append(float(point[1]))
    return LoadCurve(tuple(times), tuple(values), repeat)


def parse_curve_file(path: str) -> LoadCurve:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise LoadCurveError(f"cannot read the load curve {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise LoadCurveError(f"the load curve {path} is over {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise LoadCurveError(f"the load curve {path} is not UTF-8 text") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise LoadCurveError(f"the load curve {path} is not valid JSON: {exc}") from None
        return parse_curve_json(data)
    return parse_curve_text(text)


def _is_file_spec(spec: str) -> bool:
    # A curve's text never holds a path separator; a bare name that exists is taken as a file too.
    return os.sep in spec or os.path.isfile(spec)


class LoadSource:
    """The curve in force and when it began; re-reads a file spec when the file changes (at most once a second)."""

    def __init__(self, spec: str, clock: Callable[[], float] = time.time):
        self.spec = spec
        self.path = spec if _is_file_spec(spec) else None
        self.clock = clock
        try:
            self.curve = parse_curve_file(spec) if self.path else parse_curve_text(spec)
        except LoadCurveError as exc:
            raise LoadCurveError(f"--load-curve {spec}: {exc}") from None
        self.began = clock()
        self._stamp = self._file_stamp()
        self._checked = self.began

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh(self, now: float) -> None:
        if self.path is None or 0 <= now - self._checked < 1.0:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            curve = parse_curve_file(self.path)
        except LoadCurveError as exc:
            log.warning("load curve %s not changed: %s", self.path, exc)
            return
        self.curve, self.began = curve, now
        log.info("load curve from %s: %s", self.path, curve.describe())

    def poll(self) -> None:
        """Look at the file again now (the agent calls it once per interval; reads call it too)."""
        self._refresh(self.clock())

    def utilization(self, t: float) -> float:
        """The curve's utilisation at the clock time `t`."""
        return self.curve.at(max(0.0, t - self.began))
