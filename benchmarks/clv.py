"""Lifetime-value benchmark: BG/NBD + Gamma-Gamma fit and 12-month CLV, against lifetimes when installed.

Run as ``python -m benchmarks.clv`` (``--help`` for the flags). It simulates ``--customers`` (default
1,000,000) purchase summaries in weeks from CDNOW-like parameters (BG/NBD r 0.24, alpha 4.41, a 0.79,
b 2.43; Gamma-Gamma p 6.25, q 3.74, gamma 15.44; ages uniform on 1..78 weeks), then measures, warm,
median of ``--repeats``:

* ``fit_s``: :func:`scoring_engine.lifetime_value.fit` (checks, both models);
* ``predict_clv_s``: :func:`scoring_engine.lifetime_value.predict`: probability alive, expected purchases
  over 12 months and 12-month CLV (months of 4.345 weeks, 1 % a month);
* ``peak_memory_mib``: memory a fit plus a prediction adds above the input arrays at its peak (the larger
  of tracemalloc's and, on Linux, the resident-set high-water mark's figure);
* with ``lifetimes`` (``pip install -e '.[clv-reference]'``): its BetaGeoFitter and GammaGammaFitter on
  the same data (one run each: they take seconds), its probability alive, expected purchases and
  ``customer_lifetime_value``; the speed-up ratios and the largest relative difference of the fitted
  parameters and of the CLVs.

Targets (issue 16, 2-core machine, 1,000,000 customers): fit <= 1.0 s, CLV <= 0.3 s, >= 10x lifetimes for
each, peak memory <= 200 MiB above the input, parameters within 1e-4 of lifetimes'. With ``--json`` the
last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numba
import numpy as np

from benchmarks.scoring import peak_extra_bytes, timed
from scoring_engine import lifetime_value as lv
from scoring_engine import reference

BG = {"r": 0.24, "alpha": 4.41, "a": 0.79, "b": 2.43}
GG = {"p": 6.25, "q": 3.74, "gamma": 15.44}
MONTH_WEEKS = 4.345  # lifetimes' factor for freq="W"
STEPS, RATE = 12, 0.01


def ours(data: lv.PurchaseSummary, repeats: int) -> dict:
    args = (data.frequency, data.recency, data.age, data.spend)
    warm = [a[:20_000] for a in args]  # compiles or loads the serial and parallel kernels
    lv.predict(lv.fit(*warm), *warm, step=MONTH_WEEKS)
    fit_s, fitted = timed(lambda: lv.fit(*args), repeats)
    predict_s, prediction = timed(lambda: lv.predict(fitted, *args, steps=STEPS, step=MONTH_WEEKS,
                                                     discount_rate=RATE), repeats)
    traced, resident = peak_extra_bytes(
        lambda: lv.predict(lv.fit(*args), *args, steps=STEPS, step=MONTH_WEEKS, discount_rate=RATE))
    return {"fit_s": fit_s, "predict_clv_s": predict_s, "fitted": fitted, "prediction": prediction,
            "peak_memory_mib": max(traced, resident or 0) / 2**20}


def reference_agreement(data: lv.PurchaseSummary, fitted: lv.LifetimeValueFit, prediction, sample: int) -> float:
    """Largest relative difference between the kernels' CLV and the SciPy reference's on a sample."""
    rows = np.arange(min(sample, len(data)))
    x, tx, T, m = (a[rows] for a in (data.frequency, data.recency, data.age, data.spend))
    ref = reference.clv_reference(fitted.bgnbd.vector(), fitted.gamma_gamma.vector(), x, tx, T, m, STEPS,
                                  MONTH_WEEKS, RATE)
    return float(np.max(np.abs(prediction.clv[rows] / ref - 1)))


def with_lifetimes(data: lv.PurchaseSummary, fitted: lv.LifetimeValueFit, prediction) -> dict | None:
    try:
        import pandas as pd
        from lifetimes import BetaGeoFitter, GammaGammaFitter
    except ImportError:
        return None
    x = pd.Series(data.frequency)
    tx, T = pd.Series(data.recency), pd.Series(data.age)
    m = pd.Series(np.where(data.frequency > 0, data.spend, 0.0))  # lifetimes multiplies m by x = 0
    start = time.perf_counter()
    bgf = BetaGeoFitter(penalizer_coef=0.0).fit(x, tx, T)
    repeat = x > 0
    ggf = GammaGammaFitter(penalizer_coef=0.0).fit(x[repeat], m[repeat])
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    bgf.conditional_probability_alive(x, tx, T)
    bgf.conditional_expected_number_of_purchases_up_to_time(STEPS * MONTH_WEEKS, x, tx, T)
    clv = ggf.customer_lifetime_value(bgf, x, tx, T, m, time=STEPS, discount_rate=RATE, freq="W")
    predict_s = time.perf_counter() - start
    theirs = np.concatenate([bgf.params_[["r", "alpha", "a", "b"]].to_numpy(),
                             ggf.params_[["p", "q", "v"]].to_numpy()])
    mine = np.concatenate([fitted.bgnbd.vector(), fitted.gamma_gamma.vector()])
    return {
        "lifetimes_fit_s": fit_s, "lifetimes_predict_clv_s": predict_s,
        "lifetimes_params": dict(zip(lv.BGNBD_PARAMETERS + lv.GAMMA_GAMMA_PARAMETERS, map(float, theirs))),
        "param_max_rel_diff": float(np.max(np.abs(mine / theirs - 1))),
        "clv_max_rel_diff": float(np.max(np.abs(prediction.clv / clv.to_numpy() - 1))),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our fit and prediction (median)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--no-lifetimes", action="store_true", help="skip the comparison with lifetimes")
    parser.add_argument("--no-progress", action="store_true", help="accepted for the benchmarks' common flags")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    n = args.customers
    data = lv.simulate(n, BG, GG, seed=args.seed)
    mine = ours(data, args.repeats)
    fitted, prediction = mine.pop("fitted"), mine.pop("prediction")
    scale = 1_000_000 / n
    figures = {
        "customers": n, "threads": numba.get_num_threads(), "threading_layer": numba.threading_layer(),
        "load_average_1m": os.getloadavg()[0],  # other work on the machine inflates every wall-clock figure
        "fit_s": mine["fit_s"], "predict_clv_s": mine["predict_clv_s"],
        # per 1M customers: measured at 1M by default; scaled linearly from a smaller --customers
        "fit_1m_s": mine["fit_s"] * scale, "predict_clv_1m_s": mine["predict_clv_s"] * scale,
        "peak_memory_mib": mine["peak_memory_mib"],
        "input_mib": 4 * n * 8 / 2**20,
        "params": {**fitted.bgnbd.params, **fitted.gamma_gamma.params},
        "convergence": {"bgnbd": fitted.bgnbd.convergence.to_dict(),
                        "gamma_gamma": fitted.gamma_gamma.convergence.to_dict()},
        "reference_clv_max_rel_diff": reference_agreement(data, fitted, prediction, 20_000),
    }
    print(f"{n:,} customers, {figures['threads']} threads ({figures['threading_layer']}), "
          f"load average {figures['load_average_1m']:.1f}")
    print(f"fit (BG/NBD + Gamma-Gamma): {figures['fit_s']:.3f} s   (target <= 1.0 s at 1M)")
    print(f"p_alive + expected purchases + 12-month CLV: {figures['predict_clv_s']:.3f} s   (target <= 0.3 s at 1M)")
    print(f"peak memory above the input: {figures['peak_memory_mib']:.0f} MiB   (target <= 200 MiB)")
    print(f"CLV vs the SciPy reference (20,000 customers): max relative difference "
          f"{figures['reference_clv_max_rel_diff']:.1e}")
    theirs = None if args.no_lifetimes else with_lifetimes(data, fitted, prediction)
    if theirs is not None:
        figures.update(theirs)
        figures["speedup_fit_vs_lifetimes"] = theirs["lifetimes_fit_s"] / figures["fit_s"]
        figures["speedup_clv_vs_lifetimes"] = theirs["lifetimes_predict_clv_s"] / figures["predict_clv_s"]
        print(f"lifetimes: fit {theirs['lifetimes_fit_s']:.2f} s ({figures['speedup_fit_vs_lifetimes']:.0f}x), "
              f"CLV {theirs['lifetimes_predict_clv_s']:.2f} s ({figures['speedup_clv_vs_lifetimes']:.0f}x); "
              f"parameters within {theirs['param_max_rel_diff']:.1e}, CLV within {theirs['clv_max_rel_diff']:.1e} "
              "(relative)")
    else:
        print("lifetimes: not installed or skipped (pip install -e '.[clv-reference]')")
    if args.json:
        print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
