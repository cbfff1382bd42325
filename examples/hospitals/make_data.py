"""Generate the 10-hospital example's files: one CSV per hospital, as sites really send them.

Each hospital has its own patients (1,000 each), its own mix (older or younger, more or fewer smokers),
its own way of writing a missing value (an empty cell, '?', or 0 for a cholesterol it did not measure),
and a diagnosis coded 0-4 (0: no heart disease, 1-4: its severity), as in the Cleveland data. The
disease risk depends on the absolute values (age, blood pressure, cholesterol, smoking, chest pain type),
so a hospital that z-scores its own data alone loses what its averages say.

    .venv/bin/python examples/hospitals/make_data.py      # writes examples/hospitals/data/*.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HOSPITALS = ["aarhus", "bergen", "cork", "dresden", "evora", "florence", "graz", "haarlem", "innsbruck", "jena"]
COLUMNS = ["age", "sex", "chest_pain", "resting_bp", "cholesterol", "max_heart_rate", "smoker", "diagnosis"]


def patients(site: int, n: int, gen: np.random.Generator) -> list[list[str]]:
    age_mean = 48 + 2.2 * site  # the first hospitals see younger patients
    smoke_rate = 0.15 + 0.04 * (site % 5)
    age = np.clip(gen.normal(age_mean, 9, n), 29, 90)
    sex = gen.random(n) < 0.55
    chest = gen.choice(["typical", "atypical", "non_anginal", "asymptomatic"], n, p=[0.2, 0.25, 0.25, 0.3])
    bp = gen.normal(118 + 0.35 * (age - 50) + 3 * (site % 3), 14, n)
    chol = gen.normal(205 + 0.8 * (age - 50), 38, n)
    smoker = gen.random(n) < smoke_rate
    hr = gen.normal(172 - 0.7 * (age - 40), 18, n)
    risk = (0.07 * (age - 55) + 0.03 * (bp - 130) + 0.018 * (chol - 220) + 0.9 * smoker + 0.6 * sex
            + 1.4 * (chest == "asymptomatic") - 0.03 * (hr - 150) - 0.4 + gen.logistic(0, 1, n))
    severity = np.where(risk > 0, np.clip(1 + (risk // 1.2).astype(int), 1, 4), 0)
    rows = []
    for i in range(n):
        row = [f"{age[i]:.0f}", "male" if sex[i] else "female", chest[i], f"{bp[i]:.0f}", f"{chol[i]:.0f}",
               f"{hr[i]:.0f}", "yes" if smoker[i] else "no", str(severity[i])]
        # each site's own way of leaving a cell out
        if gen.random() < 0.04:
            row[4] = "0" if site % 2 == 0 else "?"  # cholesterol not measured
        if gen.random() < 0.03:
            row[3] = "" if site % 3 else "?"  # resting blood pressure not taken
        if gen.random() < 0.02:
            row[6] = ""  # smoking status unknown
        rows.append(row)
    return rows


def main(out: Path = Path(__file__).resolve().parent / "data", per_site: int = 1000, seed: int = 7) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(seed)
    written = []
    for site, name in enumerate(HOSPITALS):
        path = out / f"{name}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows(patients(site, per_site, gen))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main():
        print(p)
