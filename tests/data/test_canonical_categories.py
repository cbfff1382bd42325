"""Canonical categories and per-site held-out counts (issue 32, data correctness).

A number written ``1``, ``1.0`` or `` 1`` is one category; a missing cell (empty, NaN, a missing-value
code) is none, unless ``missing_category`` asks for one; sites that disagree on what a categorical
column holds (numbers at one, text at another) stop the agreement, in simulation and deployed, naming
both. ``holdout_rows`` holds out exactly the given rows per site, the same ones on every load."""

from pathlib import Path

import numpy as np
import pytest

from cohort.client.site import SiteClient, site_table
from cohort.config import load_config
from cohort.core.errors import ConfigError, DataError
from cohort.core.types import Reply
from cohort.data import exchange as X
from cohort.data import features as F
from cohort.data.from_config import federated_data
from cohort.data.sites import load_sites
from sites_channel import Sites

# three hospitals writing chest-pain type 1 as "1", "1.0" and " 1", with NaN, empty and "?" among them
SITES = {
    "cleveland": ["1.0", "2.0", "3.0", "1.0", "nan", "2.0", "4.0", "1.0"],
    "hungarian": ["1", "2", "NaN", "3", "1", "", "2", "3"],
    "va": [" 1", " 2", " 3", "?", " 2 ", "1e0", "3", "2"],
}
CATEGORIES = ["1", "2", "3", "4"]


def write_sites(folder: Path, sites: dict[str, list[str]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, cp in sites.items():
        rows = "".join(f"{50 + i},{cell},{i % 2}\n" for i, cell in enumerate(cp))
        path = folder / f"{name}.csv"
        path.write_text("age,cp,num\n" + rows)
        paths.append(path)
    return paths


def config_of(files, *sets):
    return load_config(None, ["data.dataset=csv", "data.partition=files", f"data.client_files={[str(f) for f in files]}",
                              "data.csv_target=num", "data.categorical=['cp']", "data.missing_values=['?']",
                              "data.standardize=false", "model.name=logistic_regression", *sets],
                       defaults={})  # no embedded demo: it sets data.holdout_fraction, which data.holdout_rows excludes


def deployed(config, files):
    return Sites({c: SiteClient(config, c, str(f)) for c, f in enumerate(files)})


def one_hot(data, rows):
    return data.train.x[rows, 1:].tolist()  # column 0 is age; the rest are cp's one-hot columns


def test_a_number_written_three_ways_is_one_category_and_nan_is_none(tmp_path):
    files = write_sites(tmp_path, SITES)
    config = config_of(files, "data.holdout_fraction=0")
    sites = load_sites(config.data, config.seed)
    assert sites.preprocessing.categories == {"cp": CATEGORIES}  # no '1.0', no ' 1', no 'nan', no '?'
    data = federated_data(config.data, config.seed)
    assert data.train.x.shape == (24, 1 + len(CATEGORIES))
    cells = [c for cp in SITES.values() for c in cp]
    for i, cell in enumerate(cells):
        expected = [0.0] * len(CATEGORIES)
        if cell.strip().lower() not in ("nan", "", "?"):
            expected[CATEGORIES.index(F.canonical_number(cell))] = 1.0
        assert one_hot(data, [i]) == [expected], (i, cell)
    # the deployed agreement (sites reading only their own files) gives the same columns, in the same order
    agreement = X.agree(deployed(config, files), 3, config.data, 30)
    assert agreement.preprocessing.categories == {"cp": CATEGORIES}
    # ... and so does the one under secure aggregation, where the category names travel without counts
    from cohort.secagg.settings import SecureAggregation

    secure = X.agree(deployed(config, files), 3, config.data, 30, secure=SecureAggregation(threshold=1.0), seed=1)
    assert secure.preprocessing.categories == {"cp": CATEGORIES}


def test_canonical_numbers_and_the_order_of_categories():
    assert [F.canonical_number(c) for c in ("1", "1.0", " 1", "+1", "1e0", "-0", "0.50", "2.5e-1", "1e16")] == \
        ["1", "1", "1", "1", "1", "0", "0.5", "0.25", "1e+16"]
    assert F.category_order({"10", "2", "1", F.MISSING}) == ["1", "2", "10", F.MISSING]  # by number, missing last
    assert F.category_order({"b", "a", "10", "2"}) == ["10", "2", "a", "b"]  # text: sorted as written


class Sloppy:
    """A site that declares cp numeric but sends '1.0' beside '1' (an old or hostile client)."""

    def __init__(self, honest):
        self.honest = honest

    def answer(self, message, secure=False):
        reply = self.honest.answer(message)
        if message.task == "data_statistics":
            group = {**reply.arrays[X.GROUP], "categories": X.to_json_bytes({"cp": {"1": 2, "1.0": 1}})}
            return Reply({X.GROUP: group}, reply.num_examples, reply.metrics)
        return reply

    def __getattr__(self, name):
        return getattr(self.honest, name)


def test_a_site_that_sends_a_number_written_another_way_is_refused(tmp_path):
    files = write_sites(tmp_path, SITES)
    config = config_of(files, "data.holdout_fraction=0")
    sites = {0: SiteClient(config, 0, str(files[0])), 1: Sloppy(SiteClient(config, 1, str(files[1])))}
    with pytest.raises(DataError, match=r"client 1: its categories of 'cp' are not canonical numbers"):
        X.agree(Sites(sites), 2, config.data, 30)


def test_a_text_column_keeps_its_codes_as_written(tmp_path):
    # diagnosis codes: "250" and "250.0" are two codes, since the column is text ("V45")
    files = write_sites(tmp_path, {"north": ["250", "250.0", "V45", "250"], "south": ["V45", " 250.0", "401", ""]})
    config = config_of(files, "data.holdout_fraction=0")
    assert load_sites(config.data, config.seed).preprocessing.categories == {"cp": ["250", "250.0", "401", "V45"]}


def test_a_site_whose_column_is_text_stops_the_agreement_naming_both_sites(tmp_path):
    files = write_sites(tmp_path, {**SITES, "zurich": ["typical", "atypical", "typical", "none"]})
    config = config_of(files, "data.holdout_fraction=0")
    says = r"categorical column 'cp' holds numbers at site 'cleveland' .*but text at site 'zurich' \(e.g. 'atypical'\)"
    with pytest.raises(DataError, match=says + ".*data.missing_values"):
        load_sites(config.data, config.seed)
    with pytest.raises(DataError, match=says):
        X.agree(deployed(config, files), 4, config.data, 30)
    # a text value among numbers makes a site's column text: the message shows it, and the fix it needs
    odd = write_sites(tmp_path / "odd", {"cleveland": SITES["cleveland"], "va": ["1", "2", "-", "3"]})
    with pytest.raises(DataError, match=r"text at site 'va' \(e.g. '-'\).*If '-' marks a missing value, add it to "
                                        r"data.missing_values"):
        load_sites(config_of(odd, "data.holdout_fraction=0").data, 0)
    assert load_sites(config_of(odd, "data.holdout_fraction=0", "data.missing_values=['?', '-']").data,
                      0).preprocessing.categories == {"cp": CATEGORIES}


def test_sites_of_one_shared_file_are_checked_too(tmp_path):
    pooled = tmp_path / "pooled.csv"
    rows = [("a", "1"), ("a", "2.0"), ("a", "1.0"), ("b", "2"), ("b", "1"), ("b", "2"), ("c", "x"), ("c", "y"), ("c", "x")]
    pooled.write_text("site,age,cp,num\n" + "".join(f"{s},{40 + i},{cp},{i % 2}\n" for i, (s, cp) in enumerate(rows)))
    sets = ["data.dataset=csv", "data.partition=column", "data.partition_column=site", f"data.csv_path='{pooled}'",
            "data.csv_target=num", "data.categorical=['cp']", "data.holdout_fraction=0"]
    with pytest.raises(DataError, match="holds numbers at site 'a' .*but text at site 'c'"):
        load_sites(load_config(None, sets).data, 0)
    pooled.write_text("site,age,cp,num\n" + "".join(f"{s},{40 + i},{cp},{i % 2}\n" for i, (s, cp) in enumerate(rows[:6])))
    assert load_sites(load_config(None, sets).data, 0).preprocessing.categories == {"cp": ["1", "2"]}


def test_missing_category_adds_exactly_one_missing_column(tmp_path):
    files = write_sites(tmp_path, SITES)
    config = config_of(files, "data.holdout_fraction=0", "data.missing_category=true")
    assert load_sites(config.data, config.seed).preprocessing.categories == {"cp": [*CATEGORIES, F.MISSING]}
    data = federated_data(config.data, config.seed)
    assert data.train.x.shape == (24, 1 + len(CATEGORIES) + 1)
    cells = [c for cp in SITES.values() for c in cp]
    missing = [i for i, c in enumerate(cells) if c.strip().lower() in ("nan", "", "?")]
    assert len(missing) == 4
    assert one_hot(data, missing) == [[0.0, 0.0, 0.0, 0.0, 1.0]] * 4  # NaN, empty and "?": the one missing column
    assert data.train.x[:, 1:].sum(axis=1).tolist() == [1.0] * 24  # every row now has exactly one category
    agreement = X.agree(deployed(config, files), 3, config.data, 30)
    assert agreement.preprocessing.categories == {"cp": [*CATEGORIES, F.MISSING]}


# ------------------------------------------------------------------------------ held-out rows by count

COUNTS = {"cleveland": 104, "hungarian": 89, "switzerland": 16, "va": 45}  # FLamby's heart-disease test rows
SIZES = {"cleveland": 303, "hungarian": 294, "switzerland": 123, "va": 200}


def write_heart(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(7)
    paths = []
    for name, n in SIZES.items():
        age = gen.integers(30, 80, n)
        path = folder / f"{name}.csv"
        path.write_text("age,cp,num\n" + "".join(f"{a},{gen.integers(1, 5)},{int(gen.random() < 0.45)}\n" for a in age))
        paths.append(path)
    return paths


def rows_config(files, counts, *sets):
    table = "{" + ", ".join(f"{k} = {v}" for k, v in counts.items()) + "}"
    return config_of(files, f"data.holdout_rows={table}", *sets)


def test_holdout_rows_holds_out_exactly_each_sites_count_the_same_rows_every_time(tmp_path):
    files = write_heart(tmp_path)
    config = rows_config(files, COUNTS)
    first, again = (federated_data(config.data, config.seed) for _ in range(2))
    assert first.names == list(COUNTS)
    assert first.holdout.sizes().tolist() == [104, 89, 16, 45]
    assert first.partition.sizes().tolist() == [SIZES[n] - COUNTS[n] for n in COUNTS]
    for c in range(4):
        assert first.holdout[c].tolist() == again.holdout[c].tolist()  # seeded: the same rows on every load
        assert not set(first.holdout[c].tolist()) & set(first.partition[c].tolist())
    other = federated_data(config.data, config.seed + 1)
    assert other.holdout.sizes().tolist() == [104, 89, 16, 45]
    assert any(other.holdout[c].tolist() != first.holdout[c].tolist() for c in range(4))  # the seed picks them
    # a deployed site holds out the same rows as the simulation gives its client id
    agreement = X.agree(deployed(config, files), 4, config.data, 30)
    assert agreement.held_sizes == {0: 104, 1: 89, 2: 16, 3: 45}
    site = SiteClient(config, 2, str(files[2]))
    _, train, held = site._encode(agreement.columns, agreement.labels)
    offset = sum(SIZES[n] for n in list(SIZES)[:2])
    assert (held + offset).tolist() == first.holdout[2].tolist()


def test_holdout_rows_is_checked(tmp_path):
    files = write_heart(tmp_path)
    with pytest.raises(ConfigError, match="data.holdout_fraction is 0.2; expected unset when data.holdout_rows"):
        rows_config(files, COUNTS, "data.holdout_fraction=0.2")
    with pytest.raises(ConfigError, match="data.holdout_rows is .*natural partition"):
        load_config(None, ["data.dataset=breast_cancer", "data.holdout_rows={a = 1}"], defaults={})
    with pytest.raises(ConfigError, match="data.holdout_rows is .*whole numbers from 1"):
        rows_config(files, {**COUNTS, "va": 0})
    with pytest.raises(DataError, match=r"gives no count for site\(s\) \['va'\]"):
        load_sites(rows_config(files, {k: v for k, v in COUNTS.items() if k != "va"}).data, 0)
    with pytest.raises(DataError, match=r"names \['cleaveland'\], which are no site"):
        load_sites(rows_config(files, {**COUNTS, "cleaveland": 3}).data, 0)
    with pytest.raises(DataError, match="holds out 123 rows of site 'switzerland', which has 123; at most 122"):
        load_sites(rows_config(files, {**COUNTS, "switzerland": 123}).data, 0)
    with pytest.raises(DataError, match="gives no count for site"):  # a deployed site not in the table
        SiteClient(rows_config(files, {"cleveland": 10}), 1, str(files[1]))._encode(["age", "cp", "num"], ["0", "1"])


def test_a_client_without_data_says_to_pass_its_own_file(tmp_path):
    cfg = load_config(None, ["data.dataset=csv", "data.partition=files", "data.csv_target=num",
                             "data.client_files=['data/cleveland.data', 'data/va.data']"]).data
    with pytest.raises(DataError, match=r"started without --data.*'data/cleveland.data' is not a file.*"
                                        r"--id 1 --data FILE") as e:
        site_table(cfg, 1, None)
    assert not str(e.value).startswith("data.client_files")  # the fix comes first, not another site's file
    cfg = load_config(None, ["data.dataset=csv", "data.partition=files", "data.csv_target=num",
                             f"data.client_files=['{tmp_path}/sites/*.csv']"]).data
    with pytest.raises(DataError, match=r"started without --data.*matches no file.*--id 0 --data FILE"):
        site_table(cfg, 0, None)


# ------------------------------------------------------------------------------ held-out rows by a split column

def write_split(folder: Path, marks: dict[str, str]) -> list[Path]:
    """Each site's file with a ``split`` column: row i says ``marks[name][i % len]`` (t = test, r = train)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(3)
    paths = []
    for name, n in (("cleveland", 30), ("hungarian", 25), ("va", 12)):
        pattern = marks[name]
        word = {"t": " Test", "r": "train"}  # case and spaces as a spreadsheet leaves them
        rows = "".join(f"{gen.integers(30, 80)},{gen.integers(1, 5)},{word[pattern[i % len(pattern)]]},{i % 2}\n"
                       for i in range(n))
        path = folder / f"{name}.csv"
        path.write_text("age,cp,split,num\n" + rows)
        paths.append(path)
    return paths


def test_holdout_column_holds_out_exactly_the_rows_marked_test_in_simulation_and_deployed(tmp_path):
    marks = {"cleveland": "rrt", "hungarian": "rrrrt", "va": "rt"}
    files = write_split(tmp_path, marks)
    config = config_of(files, "data.holdout_column=split")
    data = federated_data(config.data, config.seed)
    offset = 0
    for c, (name, n) in enumerate((("cleveland", 30), ("hungarian", 25), ("va", 12))):
        want = [offset + i for i in range(n) if marks[name][i % len(marks[name])] == "t"]
        assert data.holdout[c].tolist() == want
        assert sorted(data.partition[c].tolist()) == sorted(set(range(offset, offset + n)) - set(want))
        offset += n
    assert data.train.x.shape[1] == 1 + 4  # age and cp's one-hot columns: the split column is no feature
    # the seed does not move a fixed split
    assert federated_data(config.data, config.seed + 1).holdout[0].tolist() == data.holdout[0].tolist()
    # each deployed site holds out the same rows from its own file
    agreement = X.agree(deployed(config, files), 3, config.data, 30)
    assert agreement.held_sizes == {0: 10, 1: 5, 2: 6}
    _, _, held = SiteClient(config, 1, str(files[1]))._encode(agreement.columns, agreement.labels)
    assert (held + 30).tolist() == data.holdout[1].tolist()


def test_holdout_column_is_checked(tmp_path):
    files = write_split(tmp_path, {"cleveland": "rt", "hungarian": "t", "va": "rt"})
    with pytest.raises(DataError, match=r"site 'hungarian': data.holdout_column marks all its 25 rows 'test'"):
        load_sites(config_of(files, "data.holdout_column=split").data, 0)
    with pytest.raises(ConfigError, match="data.holdout_column is 'split'; expected unset when data.holdout_fraction"):
        config_of(files, "data.holdout_column=split", "data.holdout_fraction=0.2")
    with pytest.raises(ConfigError, match="data.holdout_column is 'num'; expected a column of its own"):
        config_of(files, "data.holdout_column=num")
    with pytest.raises(DataError, match=r"no column 'fold'"):
        load_sites(config_of(files, "data.holdout_column=fold").data, 0)
    bad = tmp_path / "bad"
    files = write_split(bad, {"cleveland": "rt", "hungarian": "rt", "va": "rt"})
    files[2].write_text(files[2].read_text().replace("train", "valid", 1))
    with pytest.raises(DataError, match=r"va.csv, line 2, column 'split' \(data.holdout_column\): 'valid' is neither "
                                        r"'train' nor 'test'"):
        load_sites(config_of(files, "data.holdout_column=split").data, 0)
