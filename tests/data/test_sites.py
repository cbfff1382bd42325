"""Sites as clients: natural partitions with names, federated statistics equal to the pooled ones,
imputation and missing-value codes, header-less files and target mappings, per-site held-out data, and
the generated 10-hospital example run from its TOML alone with its per-site report."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cohort.config import load_config
from cohort.core.errors import ConfigError, DataError
from cohort.data import features as F
from cohort.data.from_config import federated_data
from cohort.data.table import read_table
from cohort.experiment import build, run

ROOT = Path(__file__).resolve().parents[2]
HOSPITALS = ROOT / "examples" / "hospitals"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sites_config(tmp_path, *sets):
    return load_config(None, [f"output.dir='{tmp_path}'", "output.progress=false", "data.dataset='csv'",
                              "model.name='logistic_regression'", *sets])


def test_file_and_column_partitions_give_one_named_client_per_site(tmp_path):
    for name, rows in (("north", 30), ("south", 20), ("west", 12)):
        write(tmp_path / "sites" / f"{name}.csv", "a,b,y\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(rows)))
    data = federated_data(sites_config(tmp_path, "data.partition='files'", f"data.client_files=['{tmp_path}/sites/*.csv']",
                                       "data.csv_target='y'").data, 0)
    assert data.names == ["north", "south", "west"] and data.test is None
    assert (data.partition.sizes() + data.holdout.sizes()).tolist() == [30, 20, 12]
    assert data.holdout.sizes().tolist() == [6, 4, 2]  # 0.2 of each site, by default for natural partitions

    write(tmp_path / "pooled.csv", "site,a,y\n" + "".join(f"{s},{i},{i % 2}\n" for s, n in (("b", 9), ("a", 6), ("c", 5))
                                                            for i in range(n)))
    data = federated_data(sites_config(tmp_path, "data.partition='column'", "data.partition_column='site'",
                                       f"data.csv_path='{tmp_path}/pooled.csv'", "data.csv_target='y'").data, 0)
    assert data.names == ["a", "b", "c"]
    assert (data.partition.sizes() + data.holdout.sizes()).tolist() == [6, 9, 5]
    assert data.train.x.shape[1] == 1  # the site column is not a feature

    write(tmp_path / "who.csv", "row,client\n" + "".join(f"{i},{'x' if i < 12 else 'y'}\n" for i in range(20)))
    write(tmp_path / "rows.csv", "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    data = federated_data(sites_config(tmp_path, "data.partition='assigned'", f"data.partition_file='{tmp_path}/who.csv'",
                                       f"data.csv_path='{tmp_path}/rows.csv'", "data.csv_target='y'").data, 0)
    assert data.names == ["x", "y"] and (data.partition.sizes() + data.holdout.sizes()).tolist() == [12, 8]


def test_federated_means_and_stds_equal_the_pooled_ones():
    gen = np.random.default_rng(0)
    clients = [gen.normal(200 + 30 * c, 10 + c, size=(n, 4)) for c, n in enumerate((50, 3, 400, 1, 77))]
    for x in clients:
        x[gen.random(x.shape) < 0.1] = np.nan
    total = F.combine([F.client_statistics(x, {}) for x in clients])
    pooled = np.concatenate(clients)
    np.testing.assert_allclose(total.mean, np.nanmean(pooled, axis=0), rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.sqrt(total.m2 / total.count), np.nanstd(pooled, axis=0), rtol=1e-12, atol=0)
    np.testing.assert_array_equal(total.count, (~np.isnan(pooled)).sum(axis=0))
    hist = sum(F.histogram(x, total.low, total.high) for x in clients)
    width = (total.high - total.low) / F.BINS
    sketch = F.median_from(hist, total.low, total.high)
    for j in range(4):  # within one bin of the middle values (1/4096 of the range), between them otherwise
        s = np.sort(pooled[:, j][~np.isnan(pooled[:, j])])
        n = len(s)
        assert s[(n - 1) // 2 - 1] - width[j] <= sketch[j] <= s[n // 2 + 1] + width[j]
        assert abs(sketch[j] - np.median(s)) < 0.01 * np.std(s)


def test_missing_codes_are_imputed_with_the_federations_statistics(tmp_path):
    write(tmp_path / "a.csv", "age,chol,smoker,y\n50,200,yes,0\n60,?,no,1\n70,0,,1\n40,220,no,0\n")
    write(tmp_path / "b.csv", "age,chol,smoker,y\n30,180,yes,0\n,240,no,1\n")
    cfg = sites_config(tmp_path, "data.partition='files'", f"data.client_files=['{tmp_path}/a.csv', '{tmp_path}/b.csv']",
                       "data.csv_target='y'", "data.missing_values=['?']", "data.missing_by_column={chol=['0']}",
                       "data.categorical=['smoker']", "data.impute='mean'", "data.holdout_fraction=0",
                       "data.standardize=false").data
    data = federated_data(cfg, 0)
    x = data.train.x
    assert x.shape == (6, 4)  # age, chol, smoker=no, smoker=yes
    age_mean, chol_mean = (50 + 60 + 70 + 40 + 30) / 5, (200 + 220 + 180 + 240) / 4
    np.testing.assert_allclose(x[:, 0], [50, 60, 70, 40, 30, age_mean], rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], [200, chol_mean, chol_mean, 220, 180, 240], rtol=1e-6)
    np.testing.assert_array_equal(x[:, 2:], [[0, 1], [1, 0], [0, 0], [1, 0], [0, 1], [1, 0]])  # a missing category: zeros
    with pytest.raises(DataError, match=r"column 'chol' has missing values .*set data.impute"):
        federated_data(sites_config(tmp_path, "data.partition='files'", f"data.client_files=['{tmp_path}/a.csv']",
                                    "data.csv_target='y'", "data.missing_values=['?']", "data.categorical=['smoker']",
                                    "data.holdout_fraction=0").data, 0)


def test_local_statistics_z_score_each_client_with_its_own(tmp_path):
    write(tmp_path / "a.csv", "v,y\n" + "".join(f"{10 + i},{i % 2}\n" for i in range(10)))
    write(tmp_path / "b.csv", "v,y\n" + "".join(f"{100 + 3 * i},{i % 2}\n" for i in range(10)))
    sets = ["data.partition='files'", f"data.client_files=['{tmp_path}/a.csv', '{tmp_path}/b.csv']", "data.csv_target='y'",
            "data.holdout_fraction=0"]
    fed = federated_data(sites_config(tmp_path, *sets).data, 0).train.x[:, 0]
    local = federated_data(sites_config(tmp_path, *sets, "data.statistics='local'").data, 0).train.x[:, 0]
    assert abs(fed.mean()) < 1e-6 and fed[:10].mean() < -0.9 and fed[10:].mean() > 0.9  # one scale: the sites differ
    assert abs(local[:10].mean()) < 1e-6 and abs(local[10:].mean()) < 1e-6  # each its own: the difference is gone


def test_header_less_files_and_target_mappings(tmp_path):
    body = "".join(f"{i},{i * 2},{i % 5}\n" for i in range(40))
    write(tmp_path / "raw.csv", body)
    with pytest.raises(DataError, match="looks like data, not a header .*data.csv_columns"):
        read_table(tmp_path / "raw.csv")
    cfg = sites_config(tmp_path, f"data.csv_path='{tmp_path}/raw.csv'", "data.csv_columns=['a', 'b', 'num']",
                       "data.csv_target='num'", "data.target_binarize='> 0'").data
    data = federated_data(cfg, 0)
    assert data.train.num_classes == 2 and len(data.train) + len(data.test) == 40
    assert (np.concatenate([data.train.y, data.test.y]) == 1).sum() == 32  # i % 5 > 0 for 32 of 40
    cfg = sites_config(tmp_path, f"data.csv_path='{tmp_path}/raw.csv'", "data.csv_columns=['a', 'b', 'num']",
                       "data.csv_target='num'", "data.target_classes={'0'=0, '1'=1, '2'=1, '3'=2, '4'=2}").data
    assert federated_data(cfg, 0).train.num_classes == 3
    cfg = sites_config(tmp_path, f"data.csv_path='{tmp_path}/raw.csv'", "data.csv_columns=['a', 'b', 'num']",
                       "data.csv_target='num'", "data.target_classes={'0'=0, '1'=1}").data
    with pytest.raises(DataError, match=r"values \['2', '3', '4'\] that data.target_classes does not map"):
        federated_data(cfg, 0)
    with pytest.raises(ConfigError, match="data.target_binarize is '>> 1'"):
        sites_config(tmp_path, "data.csv_path='x.csv'", "data.csv_target='num'", "data.target_binarize='>> 1'")
    write(tmp_path / "words.csv", "a,y\n1,0\nhigh,1\n2,1\n")
    with pytest.raises(DataError, match=r"line 3, column 'a': 'high' is not a number.*data.missing_values.*data.categorical"):
        federated_data(sites_config(tmp_path, f"data.csv_path='{tmp_path}/words.csv'", "data.csv_target='y'").data, 0)
    write(tmp_path / "nantarget.csv", "a,y\n1,0\n2,nan\n3,1\n")  # "nan" is a missing target, not a class of its own
    with pytest.raises(DataError, match="line 3: the target 'y' is missing"):
        federated_data(sites_config(tmp_path, f"data.csv_path='{tmp_path}/nantarget.csv'", "data.csv_target='y'").data, 0)
    with pytest.raises(DataError, match="line 3: the target 'y' is missing"):
        federated_data(sites_config(tmp_path, f"data.csv_path='{tmp_path}/nantarget.csv'", "data.csv_target='y'",
                                    "data.csv_task='regression'", "data.partition='iid'").data, 0)
    write(tmp_path / "notarget.csv", "a,y\n1,0\n2,\n3,1\n")
    with pytest.raises(DataError, match="line 3: the target 'y' is missing"):
        federated_data(sites_config(tmp_path, f"data.csv_path='{tmp_path}/notarget.csv'", "data.csv_target='y'").data, 0)


@pytest.mark.parametrize("sets, match", [
    (["data.partition='files'"], "data.client_files is"),
    (["data.partition='column'", "data.csv_path='x.csv'"], "data.partition_column is"),
    (["data.client_files=['a.csv']", "data.partition='iid'"], "set exactly when data.partition = 'files'"),
    (["data.partition='files'", "data.client_files=['no/such/*.csv']"], "matches no file"),
    (["data.impute='zero'", "data.csv_path='x.csv'"], "data.impute is 'zero'"),
    (["data.statistics='pooled'", "data.csv_path='x.csv'"], "data.statistics is 'pooled'"),
    (["data.target_classes={a=0, b=2}", "data.csv_path='x.csv'"], "classes numbered 0 to 1 with none skipped"),
])
def test_bad_site_settings_say_what_to_do(tmp_path, sets, match):
    with pytest.raises((ConfigError, DataError), match=match):
        build(sites_config(tmp_path, "data.csv_target='y'", *sets))


def test_the_ten_hospital_example_runs_from_its_toml_and_reports_every_site(tmp_path):
    files = sorted((HOSPITALS / "data").glob("*.csv"))
    assert len(files) == 10  # generated by make_data.py, committed so that the TOML runs alone
    out = subprocess.run([sys.executable, "-m", "cohort.cli", "run", "examples/hospitals/hospitals.toml", "--out", str(tmp_path),
                          "--no-progress", "--quiet", "--set", "rounds=3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (folder,) = tmp_path.glob("hospitals-*")
    report = subprocess.run([sys.executable, "-m", "cohort.cli", "report", str(folder)], capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    for f in files:
        assert f" {f.stem} " in report.stdout
    assert "all (weighted)" in report.stdout and "round 3" in report.stdout
    weighted = float(report.stdout.split("all (weighted)")[1].split()[-1])
    assert weighted > 0.65
    plot = subprocess.run([sys.executable, "-m", "cohort.cli", "plot", str(folder), "--per-site"], capture_output=True,
                          text=True, timeout=120)
    assert plot.returncode == 0 and (folder / "sites.png").stat().st_size > 10_000, plot.stderr
    result = run(load_config(HOSPITALS / "hospitals.toml", ["rounds=1", "output.progress=false"]), write=False)
    assert "accuracy" not in result.state.history[-1] and "federated_accuracy" in result.state.history[-1]  # no server test set
