"""The statistics exchange of a site federation, in one process: sites that read only their own file
agree with a server that reads none, and the agreement is exactly the simulation's preprocessing."""

import json
from pathlib import Path

import numpy as np
import pytest

from cohort.core.tasks import run_task

from cohort.algorithms import ALGORITHMS
from cohort.client.site import SiteClient, site_count, site_table
from cohort.config import load_config
from cohort.core.errors import ConfigError, DataError
from cohort.core.types import Message, Reply
from cohort.data import exchange as X
from cohort.data import features as F
from cohort.data.from_config import federated_data
from cohort.data.sites import load_sites
from hospitals import make_hospitals
from sites_channel import Sites


@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    return make_hospitals(tmp_path_factory.mktemp("hospitals"), per_site=80, seed=3, count=4)


def config_of(files, *extra):
    sets = ["data.dataset=csv", "data.partition=files", f"data.client_files={[str(f) for f in files]}",
            "data.csv_target=diagnosis", "data.categorical=['sex','chest_pain','smoker']", "data.missing_values=['?']",
            "data.missing_by_column={cholesterol=['0']}", "model.name=logistic_regression", *extra]
    return load_config(None, sets)


@pytest.mark.parametrize("extra", [["data.impute=median", "data.target_binarize='> 0'"],
                                   ["data.impute=mean"],  # the 0-4 target as five classes, agreed among the sites
                                   ["data.impute=constant", "data.impute_value=-1", "data.standardize=false"]])
def test_the_agreement_is_the_simulations_preprocessing(hospitals, extra):
    config = config_of(hospitals, *extra)
    sites = {c: SiteClient(config, c, str(f)) for c, f in enumerate(hospitals)}
    assert [s.name for s in sites.values()] == [f.stem for f in hospitals]
    agreement = X.agree(Sites(sites), site_count(config.data)[0], config.data, 30)
    simulated = load_sites(config.data, config.seed)
    p, q = agreement.preprocessing, simulated.preprocessing
    for name in ("fill", "mean", "std"):
        assert getattr(p, name).tobytes() == getattr(q, name).tobytes(), name  # bit for bit
    assert p.categories == q.categories and agreement.names == dict(enumerate(simulated.names))
    assert agreement.num_classes == simulated.train.num_classes
    assert agreement.train_sizes == dict(enumerate(simulated.partition.sizes().tolist()))
    assert agreement.held_sizes == dict(enumerate(simulated.holdout.sizes().tolist()))
    # every site prepares its rows exactly as the simulation prepared them
    fed = federated_data(config.data, config.seed)
    for c, site in sites.items():
        trainer = site._inner({"site": {X.AGREEMENT: agreement.message_config()}})
        rows = np.concatenate([fed.partition[c], fed.holdout[c]])
        mine = site._trainer[1]
        assert trainer is mine
        enc, train, held = site._encode(agreement.columns, agreement.labels)
        x = F.transform(enc.numeric, enc.categorical, np.concatenate([train, held]), agreement.preprocessing)
        assert x.tobytes() == fed.train.x[rows].tobytes()
        assert enc.y[np.concatenate([train, held])].tolist() == fed.train.y[rows].tolist()


def test_a_server_without_rows_builds_the_experiment_from_the_agreement(hospitals):
    from cohort.experiment import build

    config = config_of(hospitals, "data.impute=mean", "data.target_binarize='> 0'")
    sites = {c: SiteClient(config, c, str(f)) for c, f in enumerate(hospitals)}
    agreement = X.agree(Sites(sites), 4, config.data, 30)
    remote = config_of([Path("/nowhere") / f.name for f in hospitals], "data.impute=mean", "data.target_binarize='> 0'")
    exp = build(remote, sites=agreement)  # the files do not exist here: nothing is read
    local = build(config)
    assert exp.num_clients == 4 and exp.client_names == local.client_names and exp.remote
    assert exp.train.feature_shape == local.train.feature_shape
    assert exp.initial_state().model.keys() == local.initial_state().model.keys()
    assert "held by the sites" in exp.describe_clients()


def test_sites_that_disagree_are_named(hospitals, tmp_path):
    config = config_of(hospitals, "data.impute=mean")
    odd = tmp_path / "odd.csv"
    lines = hospitals[1].read_text().splitlines()
    odd.write_text("\n".join([lines[0].replace("age", "years")] + lines[1:]) + "\n")
    sites = {0: SiteClient(config, 0, str(hospitals[0])), 1: SiteClient(config, 1, str(odd))}
    with pytest.raises(DataError, match=r"site 'odd' \(client 1\) has columns"):
        X.agree(Sites(sites), 2, config.data, 30)
    twin = {0: SiteClient(config, 0, str(hospitals[0])), 1: SiteClient(config, 1, str(hospitals[0]))}
    with pytest.raises(DataError, match="two sites share a name"):
        X.agree(Sites(twin), 2, config.data, 30)


class Liar:
    """A site that answers the exchange with whatever it is given."""

    def __init__(self, honest, **lies):
        self.honest, self.lies = honest, lies

    def answer(self, message):
        reply = self.honest.answer(message)
        if message.task in self.lies:
            return self.lies[message.task](reply)
        return reply

    def __getattr__(self, name):
        return getattr(self.honest, name)


def _with(reply, **arrays):
    return Reply({X.GROUP: {**reply.arrays[X.GROUP], **arrays}}, reply.num_examples, reply.metrics)


@pytest.mark.parametrize("lie, says", [
    ({"data_schema": lambda r: _with(r, schema=np.frombuffer(b"{not json", np.uint8))}, "not valid JSON"),
    ({"data_schema": lambda r: _with(r, schema=X.to_json_bytes({"name": "", "columns": [], "labels": []}))}, "name of 1 to 200"),
    ({"data_schema": lambda r: _with(r, schema=np.frombuffer(b"[" * 200_000, np.uint8))}, "nested too deeply"),
    ({"data_statistics": lambda r: _with(r, mean=np.full(r.arrays[X.GROUP]["mean"].shape, np.nan))}, "finite vectors"),
    ({"data_statistics": lambda r: _with(r, count=-r.arrays[X.GROUP]["count"])}, "do not fit any rows"),
    # a huge count with a huge mean would drag the federation's mean anywhere
    ({"data_statistics": lambda r: _with(r, count=np.full_like(r.arrays[X.GROUP]["count"], 1e300),
                                         mean=np.full_like(r.arrays[X.GROUP]["mean"], 1e300))}, "do not fit any rows"),
    ({"data_statistics": lambda r: _with(r, mean=r.arrays[X.GROUP]["high"] + 1000)}, "do not fit any rows"),
    ({"data_statistics": lambda r: _with(r, m2=r.arrays[X.GROUP]["m2"] * 1e6)}, "do not fit any rows"),
    ({"data_statistics": lambda r: _with(r, m2=r.arrays[X.GROUP]["m2"].astype(np.float32))}, "float64 vectors"),
    ({"data_statistics": lambda r: _with(r, categories=X.to_json_bytes({"sex": {"f": -3}}))}, "category counts"),
    # a column nobody declared would break every other site's one-hot encoding
    ({"data_statistics": lambda r: _with(r, categories=X.to_json_bytes({"evil": {"x": 1}}))}, "declared categorical"),
    ({"data_statistics": lambda r: Reply(r.arrays, r.num_examples, {**r.metrics, "rows_train": 1e13})}, "row counts"),
    ({"data_statistics": lambda r: Reply({"model": {}}, 1)}, "no 'site' group"),
    ({"data_histogram": lambda r: _with(r, hist=r.arrays[X.GROUP]["hist"][:, :10])}, "histogram"),
    ({"data_histogram": lambda r: _with(r, hist=r.arrays[X.GROUP]["hist"] * 2**40)}, "add up to its column counts"),
])
def test_a_malformed_answer_stops_the_agreement_naming_the_site(hospitals, lie, says):
    config = config_of(hospitals[:2], "data.impute=median")
    sites = {0: SiteClient(config, 0, str(hospitals[0])), 1: Liar(SiteClient(config, 1, str(hospitals[1])), **lie)}
    with pytest.raises(DataError, match=f"client 1: .*{says}"):
        X.agree(Sites(sites), 2, config.data, 30)


def test_a_site_without_the_agreement_or_with_a_bad_one_fails_clearly(hospitals):
    config = config_of(hospitals[:2], "data.impute=mean")
    site = SiteClient(config, 0, str(hospitals[0]))
    with pytest.raises(DataError, match="has not received how to prepare its rows"):
        site.train({}, {"round": 1, "seed": 0}, None)
    with pytest.raises(DataError, match="malformed"):
        site.evaluate({}, {"site": {X.AGREEMENT: {"fill": [1.0], "mean": [0.0], "std": [0.0], "columns": [],
                                                  "categories": {}, "labels": None, "num_classes": 2, "standardize": True}}})
    with pytest.raises(ConfigError, match="holds site 'aarhus', client 0; asked for 1"):
        site(1)
    with pytest.raises(ConfigError, match="no site data"):
        run_task(ALGORITHMS["fedavg"]().client, Message("data_schema", {}, {}), object(), None)  # the runtime's path


def test_a_label_no_other_site_had_is_refused_by_name(hospitals, tmp_path):
    config = config_of(hospitals[:2], "data.impute=mean")
    site = SiteClient(config, 0, str(hospitals[0]))
    with pytest.raises(DataError, match="no site had when the federation agreed its classes"):
        site._encode(site.table.columns, ["0", "1"])


def test_site_tables_from_a_shared_file_or_its_own(tmp_path):
    shared = tmp_path / "all.csv"
    shared.write_text("site,x,y\nb,1,0\na,2,1\nb,3,1\na,4,0\nc,5,1\n")
    cfg = load_config(None, ["data.dataset=csv", f"data.csv_path='{shared}'", "data.csv_target=y",
                             "data.partition=column", "data.partition_column=site"]).data
    table, name = site_table(cfg, 1, None)  # sorted values: a, b, c
    assert name == "b" and [r[1] for r in table.rows] == ["1", "3"] and table.lines == [2, 4]
    own = tmp_path / "mine.csv"
    own.write_text("site,x,y\nc,5,1\nc,6,0\n")
    table, name = site_table(cfg, 2, str(own))
    assert name == "c" and len(table.rows) == 2
    with pytest.raises(ConfigError, match="--id is 7"):
        site_table(cfg, 7, None)
    files = load_config(None, ["data.dataset=csv", "data.partition=files", "data.client_files=['/no/where.csv', '/no/else.csv']",
                               "data.csv_target=y"]).data
    assert site_count(files)[0] == 2
    with pytest.raises(DataError, match="--data"):
        site_table(files, 0, "/no/where.csv")


class Recording(Sites):
    """The server's side of the channel, recording every answer it receives."""

    def __init__(self, sites):
        super().__init__(sites)
        self.received = []

    def run(self, message, instructions, timeout_s=None):
        for pos, outcome in super().run(message, instructions, timeout_s):
            self.received.append((message.task, outcome))
            yield pos, outcome


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_under_secure_aggregation_the_server_learns_only_sums(hospitals, mode):
    from cohort.secagg.settings import SecureAggregation

    config = config_of(hospitals, "data.impute=median", "data.target_binarize='> 0'")
    sites = {c: SiteClient(config, c, str(f)) for c, f in enumerate(hospitals)}
    plain = X.agree(Sites(sites), 4, config.data, 30)
    channel = Recording({c: SiteClient(config, c, str(f)) for c, f in enumerate(hospitals)})
    settings = SecureAggregation(threshold=0.75, degree=2 if mode == "secagg+" else 0)
    secure = X.agree(channel, 4, config.data, 30, secure=settings, seed=3)
    p, q = secure.preprocessing, plain.preprocessing
    assert np.allclose(p.mean, q.mean, rtol=1e-9, atol=1e-9) and np.allclose(p.std, q.std, rtol=1e-8)
    assert p.categories == q.categories and secure.names == plain.names and secure.train_sizes == plain.train_sizes
    # the medians: the same 4,096-bin sketch over mean ± 4 sd instead of the range; each lands within one of
    # its own bins of the middle values
    simulated = load_sites(config.data, config.seed)
    enc = F.encode([site.table for site in sites.values()], F.Spec("diagnosis", categorical=("sex", "chest_pain", "smoker"),
                                                                   missing_values=("?",), missing_by_column={"cholesterol": ("0",)},
                                                                   binarize="> 0"))
    rows = np.concatenate([simulated.partition[c] for c in range(4)])
    for j, col in enumerate(enc.numeric[rows].T):
        col = np.sort(col[~np.isnan(col)])
        below, above = col[(len(col) - 1) // 2], col[len(col) // 2]
        for fill, width in ((q.fill[j], (col[-1] - col[0]) / F.BINS), (p.fill[j], 8 * p.std[j] / F.BINS)):
            assert below - width - 1e-9 <= fill <= above + width + 1e-9, (j, fill, below, above)
    # what reached the server: schemas and category names in the clear, every statistic masked
    tasks = {t for t, _ in channel.received}
    assert {"secagg:data_statistics", "secagg:data_spread", "secagg:data_histogram"} <= tasks  # the protocol around each
    assert not tasks & {"data_statistics", "data_spread", "data_histogram"}  # none of them in the clear
    for task, outcome in channel.received:
        if task.startswith("secagg:"):
            assert set(outcome.arrays) == {"secagg"} and set(outcome.arrays["secagg"]) == {"y"}
    counts = [site.answer(Message("data_statistics", {}, {"site": {"columns": plain.columns, "labels": None,
                                                                     "clients": 4, "categories": {}}})).arrays["site"]["sum"]
              for site in sites.values()]
    from cohort.secagg.protocol import to_limbs

    masked = b"".join(o.arrays["secagg"]["y"].tobytes() for t, o in channel.received if t == "data_statistics")
    assert not any(to_limbs(c)[:16].tobytes() in masked for c in counts)


def test_secure_statistics_refuse_a_sum_the_ring_cannot_hold(hospitals, tmp_path):
    from cohort.secagg.settings import SecureAggregation

    huge = tmp_path / "huge.csv"
    lines = hospitals[1].read_text().splitlines()
    huge.write_text("\n".join(lines[:2] + [lines[2].replace(lines[2].split(",")[0], "1e16", 1)] + lines[3:]) + "\n")
    config = config_of([hospitals[0], huge], "data.impute=mean", "data.target_binarize='> 0'")
    sites = {0: SiteClient(config, 0, str(hospitals[0])), 1: SiteClient(config, 1, str(huge))}
    with pytest.raises(DataError, match="column 'age'.*too large for secure aggregation's exact sums.*rescale"):
        X.agree(Sites(sites), 2, config.data, 30, secure=SecureAggregation(threshold=1.0))


def test_a_site_under_secure_aggregation_gives_no_statistic_in_the_clear(hospitals):
    config = config_of(hospitals[:2], "data.impute=mean", "secagg.mode=secagg")
    site = SiteClient(config, 0, str(hospitals[0]))
    schema = site.answer(Message("data_schema", {}, {}))  # names and columns: in the clear
    columns = json.loads(schema.arrays["site"]["schema"].tobytes())["columns"]
    for task in ("data_statistics", "data_histogram", "data_spread"):
        with pytest.raises(ConfigError, match="only masked"):
            site.answer(Message(task, {}, {"site": {"columns": columns, "labels": None, "clients": 2,
                                                    "categories": {}}}))


def test_impute_none_refuses_missing_cells_at_a_site_as_in_simulation(hospitals):
    config = config_of(hospitals[:2], "data.target_binarize='> 0'")  # impute = "none" (the default)
    with pytest.raises(DataError, match="has missing values"):
        load_sites(config.data, config.seed)
    sites = {c: SiteClient(config, c, str(f)) for c, f in enumerate(hospitals[:2])}
    with pytest.raises(DataError, match="has missing values.*set data.impute"):
        X.agree(Sites(sites), 2, config.data, 30)


def test_the_agreement_is_kept_for_a_resume_and_a_damaged_one_is_refused(hospitals):
    config = config_of(hospitals, "data.impute=median", "data.target_binarize='> 0'")
    sites = {c: SiteClient(config, c, str(f)) for c, f in enumerate(hospitals)}
    agreement = X.agree(Sites(sites), 4, config.data, 30)
    again = X.Agreement.from_json(agreement.to_json())
    assert again.message_config() == agreement.message_config() and again.names == agreement.names
    assert again.train_sizes == agreement.train_sizes and again.num_clients == 4
    with pytest.raises(DataError, match="damaged"):
        X.Agreement.from_json(agreement.to_json().replace('"fill"', '"fil"'))
