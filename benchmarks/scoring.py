"""Scoring engine benchmark: Numba kernels against the NumPy reference.

Run as ``python -m benchmarks.scoring`` (``--help`` for the flags). For each
size (default 100,000, 1,000,000 and 10,000,000 customers x the default
model's 16 signals x 4 dimensions, 5 % of values missing) it generates a
realistic matrix, fits the model once, then measures:

* ``score``: :func:`scoring_engine.score` (dimensions, composite, tier,
  including the population cut-offs of the share tiers), warm, median of
  ``--repeats``;
* ``reference``: the NumPy reference doing the same work (same run, same data);
* ``rank``: exact ranks and percentiles of the composites, median of repeats;
* ``peak``: extra resident memory while scoring, as (input + extra) / (input +
  outputs) (Linux: the peak-RSS counter is reset before the call);
* ``floor``: one parallel read of the whole matrix, the memory-bandwidth floor.

Also: ``score_one`` (one customer by signal name, median of many calls) and
the first-call cost in a fresh process (kernels loaded from Numba's cache,
and, unless ``--no-cold``, compiled from scratch). Targets (issue 3, 2-core
machine): 10M scored in <= 0.5 s; >= 20x the NumPy reference; 10M ranked in
<= 1.0 s; peak memory <= 1.5 x (input + outputs); score_one <= 20 us. With
``--json`` the last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numba
import numpy as np

import scoring_engine as se
from scoring_engine import reference

SIZES = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
NOMINAL_FLOOR_10M_S = 0.07  # the figure for reading 10M x 16 float64 once on this machine


def generate(n: int, seed: int) -> np.ndarray:
    """n customers x the default model's 17 signals (model column order), 5 % missing, finite."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, 17))
    revenue = rng.lognormal(13.0, 1.6, n)
    columns = [
        lambda: revenue,  # annual_revenue
        lambda: rng.beta(5, 4, n),  # gross_margin
        lambda: np.round(rng.gamma(2.0, 2.5, n), 1),  # tenure_years
        lambda: revenue * rng.uniform(0.5, 6.0, n),  # predicted_ltv
        lambda: np.round(rng.exponential(12.0, n)),  # payment_delay_days
        lambda: rng.uniform(0, 1, n),  # expansion_potential
        lambda: rng.beta(2, 3, n),  # strategic_fit
        lambda: rng.integers(1, 21, n).astype(np.float64),  # product_lines
        lambda: rng.beta(1.2, 6, n),  # logo_value
        lambda: np.round(rng.uniform(0, 1, n), 2),  # referenceability
        lambda: np.floor(rng.lognormal(8.0, 2.0, n)),  # audience_reach
        lambda: rng.integers(-100, 101, n).astype(np.float64),  # nps
        lambda: rng.poisson(4.0, n).astype(np.float64),  # feedback_items_90d
        lambda: rng.poisson(1.0, n).astype(np.float64),  # beta_programs
        lambda: rng.beta(2, 5, n),  # feature_adoption
        lambda: rng.poisson(0.7, n).astype(np.float64),  # co_design_sessions
        lambda: rng.beta(2, 3, n),  # use_case_adoption (a base with a value hierarchy)
    ]
    for j, make in enumerate(columns):
        column = make()
        column[rng.random(n) < 0.05] = np.nan
        X[:, j] = column
    return X


@numba.njit(parallel=True, cache=True)
def _read_all(X):
    total = 0.0
    for i in numba.prange(X.shape[0]):
        row = 0.0
        for j in range(X.shape[1]):
            row += X[i, j]
        total += row
    return total


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def rss_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_extra_bytes(fn) -> tuple[int, int | None]:
    """Memory fn() adds at its peak: (by tracemalloc, which sees every NumPy allocation; by resident set
    size, Linux only, which also sees Numba's own allocations but misses reused heap pages)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak-RSS counter (VmHWM)
        before = rss_bytes("VmRSS")
    except OSError:
        before = None
    tracemalloc.start()
    fn()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = rss_bytes("VmHWM") if before is not None else None
    return traced, (None if before is None or peak is None else max(0, peak - before))


def first_call(cold: bool) -> float:
    """Seconds from a fresh interpreter's import of scoring_engine to the end of warm_up()."""
    code = ("import time; t = time.perf_counter(); import scoring_engine as se; se.warm_up(); "
            "print(time.perf_counter() - t)")
    env = dict(os.environ)
    if cold:
        env["CVH_NUMBA_CACHE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent)
    return float(out.stdout.strip().splitlines()[-1])


def score_one_us(frozen: se.FittedModel, X: np.ndarray, calls: int) -> tuple[float, float]:
    names = frozen.model.signal_names
    rows = [{name: float(v) for name, v in zip(names, X[i]) if v == v} for i in range(64)]
    arrays = [np.ascontiguousarray(X[i]) for i in range(64)]
    results = []
    for inputs in (rows, arrays):
        for i in range(200):
            se.score_one(frozen, inputs[i % 64])
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for i in range(calls):
                se.score_one(frozen, inputs[i % 64])
            samples.append((time.perf_counter() - start) / calls * 1e6)
        results.append(statistics.median(samples))
    return results[0], results[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100k,1m,10m", help="comma-separated: 100k, 1m, 10m or a number")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each Numba step (median)")
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the NumPy reference")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--no-cold", action="store_true", help="skip the first call without Numba's cache")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    sizes = [(s, SIZES.get(s.lower()) or int(float(s))) for s in args.sizes.split(",") if s]

    figures: dict = {"threads": numba.get_num_threads(), "threading_layer": None, "sizes": {}}
    figures["first_call_s"] = first_call(cold=False)
    figures["first_call_cold_s"] = None if args.no_cold else first_call(cold=True)
    se.warm_up()
    figures["threading_layer"] = numba.threading_layer()
    model = se.default_model()

    header = (f"{'customers':>11} {'fit s':>7} {'score s':>8} {'numpy s':>8} {'speedup':>8} {'cust/s':>10} "
              f"{'rank s':>7} {'floor s':>8} {'x floor':>7} {'peak':>6}")
    print(header)
    for label, n in sizes:
        X = generate(n, args.seed)
        fit_s, fitted = timed(lambda: se.fit(model, X), 1)
        score_s, result = timed(lambda: se.score(fitted, X), args.repeats)
        rank_s, _ = timed(lambda: se.rank_composites(result.composite), args.repeats)
        ref_fit = reference.fit_reference(model, X)
        ref_s, ref = timed(lambda: reference.score_reference(ref_fit, X), args.reference_repeats)
        np.testing.assert_allclose(result.composite, ref.composite, rtol=1e-9, atol=1e-9)
        _read_all(X[:10])
        floor_s, _ = timed(lambda: _read_all(X), args.repeats)
        input_bytes = X.nbytes
        output_bytes = result.dimensions.nbytes + result.composite.nbytes + result.tier.nbytes
        traced, resident = peak_extra_bytes(lambda: se.score(fitted, X))
        peak_ratio = (input_bytes + max(traced, resident or 0)) / (input_bytes + output_bytes)
        del result, ref
        row = {
            "customers": n, "fit_s": fit_s, "score_s": score_s, "reference_s": ref_s, "speedup": ref_s / score_s,
            "customers_per_s": n / score_s, "rank_s": rank_s, "floor_s": floor_s, "floor_ratio": score_s / floor_s,
            "peak_memory_ratio": peak_ratio, "input_mb": input_bytes / 2**20, "output_mb": output_bytes / 2**20,
            "peak_extra_traced_mb": traced / 2**20, "peak_extra_resident_mb": None if resident is None else resident / 2**20,
        }
        figures["sizes"][label] = row
        peak_text = f"{peak_ratio:.2f}"
        print(f"{n:>11,} {fit_s:>7.3f} {score_s:>8.3f} {ref_s:>8.2f} {ref_s / score_s:>7.1f}x "
              f"{n / score_s:>10.3g} {rank_s:>7.3f} {floor_s:>8.3f} {score_s / floor_s:>6.1f}x {peak_text:>6}")
        if label == sizes[-1][0]:
            frozen = fitted.with_tier_thresholds(se.score(fitted, X[:200_000]).tier_thresholds)
            figures["score_one_us"], figures["score_one_array_us"] = score_one_us(frozen, X, 20_000)
        del X, fitted, ref_fit

    largest = figures["sizes"][sizes[-1][0]]
    ten = figures["sizes"].get("10m")
    figures.update({
        "score_10m_s": ten["score_s"] if ten else None,
        "rank_10m_s": ten["rank_s"] if ten else None,
        "speedup_vs_numpy": largest["speedup"],
        "peak_memory_ratio": largest["peak_memory_ratio"],
        "floor_10m_s": ten["floor_s"] if ten else None,
        "nominal_floor_10m_s": NOMINAL_FLOOR_10M_S,
        "score_vs_floor": largest["floor_ratio"],
        "score_vs_nominal_floor": ten["score_s"] / NOMINAL_FLOOR_10M_S if ten else None,
    })
    print(f"score_one: {figures['score_one_us']:.1f} us by name, {figures['score_one_array_us']:.1f} us from an "
          f"array; first call: {figures['first_call_s']:.2f} s from Numba's cache"
          + ("" if figures["first_call_cold_s"] is None else f", {figures['first_call_cold_s']:.1f} s compiling")
          + f"; {figures['threads']} threads ({figures['threading_layer']})")
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
