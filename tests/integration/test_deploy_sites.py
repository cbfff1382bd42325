"""Sites as client processes that read only their own file, and a server that reads none: the data are
agreed over gRPC before round 1, and the run gives the simulation's bits, names and per-site records."""

import json
import subprocess
from pathlib import Path

import pytest

from hospitals import make_hospitals
from processes import Federation, cohort, model_of



@pytest.fixture(scope="module")
def hospitals(tmp_path_factory):
    return make_hospitals(tmp_path_factory.mktemp("hospitals"), per_site=120, seed=5, count=3)


def sets_for(files, *extra):
    return ["data.dataset=csv", "data.partition=files", f"data.client_files={[str(f) for f in files]}",
            "data.csv_target=diagnosis", "data.categorical=['sex','chest_pain','smoker']", "data.missing_values=['?']",
            "data.missing_by_column={cholesterol=['0']}", "model.name=logistic_regression", "rounds=3", *extra]


def sites_run(fed, files, sets):
    """One client process per site file, each reading only its own; the server's output once all ended well."""
    clients = [fed._start(cohort("client", "--server", fed.address, "--id", str(c), "--retry-s", "20", "--data", str(f),
                                 *[a for s in sets for a in ("--set", s)]))
               for c, f in enumerate(files)]
    out = fed.wait()
    for c in clients:
        c_out, c_err = c.communicate(timeout=60)
        assert c.returncode == 0 and "done (the run has ended)" in c_out, c_err
    return out


@pytest.mark.parametrize("extra", [["data.impute=median", "data.target_binarize='> 0'"],
                                   ["data.impute=mean", "data.statistics=local", "server.algorithm=scaffold"]])
def test_sites_with_their_own_files_give_the_simulations_bits(hospitals, tmp_path, extra):
    sim = subprocess.run(cohort("run", "--out", str(tmp_path), "--quiet", "--no-progress",
                                *[a for s in sets_for(hospitals, *extra, "name=sim") for a in ("--set", s)]),
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    # the server's config names files it does not have: it reads no row
    nowhere = [Path("/nonexistent") / f.name for f in hospitals]
    with Federation(tmp_path, sets_for(nowhere, *extra, "name=dep")) as fed:
        out = sites_run(fed, hospitals, sets_for(nowhere, *extra))
    assert "agreeing the data with the sites" in out and "held by the sites" in out
    deployed, folder = model_of(tmp_path, "dep")
    simulated, sim_folder = model_of(tmp_path, "sim")
    for k in simulated:
        assert deployed[k].tobytes() == simulated[k].tobytes(), k
    metrics = [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()] for f in (folder, sim_folder)]
    assert [m["federated_accuracy"] for m in metrics[0]] == [m["federated_accuracy"] for m in metrics[1]]
    named = [[line for line in (f / "clients.txt").read_text().splitlines() if line.startswith("clients: ")]
             for f in (folder, sim_folder)]
    assert named[0] == named[1] and len(named[0]) == 1 and all(f.stem in named[0][0] for f in hospitals)
    rows = [json.loads(line) for line in (folder / "clients.jsonl").read_text().splitlines()]
    assert {r["name"] for r in rows} == {f.stem for f in hospitals}
    assert {(r["round"], r["task"]) for r in rows} >= {(r, t) for r in (1, 2, 3) for t in ("fit", "evaluate")}


def test_under_secure_aggregation_the_sites_statistics_reach_the_server_only_as_sums(hospitals, tmp_path):
    import numpy as np

    extra = ["data.impute=median", "data.target_binarize='> 0'", "secagg.mode=secagg", "secagg.threshold=1.0"]
    sim = subprocess.run(cohort("run", "--out", str(tmp_path), "--quiet", "--no-progress",
                                *[a for s in sets_for(hospitals, *extra, "name=sim") for a in ("--set", s)]),
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    with Federation(tmp_path, sets_for(hospitals, *extra, "name=dep")) as fed:
        clients = [fed._start(cohort("client", "--server", fed.address, "--id", str(c), "--retry-s", "20", "--data", str(f),
                                     *[a for s in sets_for(hospitals, *extra) for a in ("--set", s)]))
                   for c, f in enumerate(hospitals)]
        fed.wait()
        for c in clients:
            c_out, c_err = c.communicate(timeout=60)
            assert c.returncode == 0, c_err
    deployed, folder = model_of(tmp_path, "dep")
    simulated, _ = model_of(tmp_path, "sim")
    # the statistics agree to rounding (sums in fixed point, not Chan's pairwise form): the same model to 1e-5
    for k in simulated:
        assert np.allclose(deployed[k], simulated[k], atol=1e-5), k
    rows = [json.loads(line) for line in (folder / "clients.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r["client"]) for r in rows if r["task"] == "fit") == [(r, c) for r in (1, 2, 3) for c in range(3)]


def test_a_site_whose_columns_differ_stops_the_server_before_round_one(hospitals, tmp_path):
    odd = tmp_path / "odd.csv"
    lines = hospitals[1].read_text().splitlines()
    odd.write_text("\n".join([lines[0].replace("age", "years")] + lines[1:]) + "\n")
    sets = sets_for(hospitals[:2], "data.impute=mean", "data.target_binarize='> 0'", "name=bad")
    with Federation(tmp_path, sets) as fed:
        clients = [fed._start(cohort("client", "--server", fed.address, "--id", str(c), "--retry-s", "5", "--data", str(f),
                                     *[a for s in sets for a in ("--set", s)]))
                   for c, f in enumerate([hospitals[0], odd])]
        fed.server.wait(timeout=90)
        err = fed.stderr()
        assert fed.server.returncode == 2, err
        assert "site 'odd' (client 1) has columns" in err and "every site's file needs the same columns" in err, err
        for c in clients:
            out, _ = c.communicate(timeout=60)
            assert "the server stopped before the run began" in out
    assert not list(tmp_path.glob("bad-*/metrics.jsonl"))


def test_a_glob_in_client_files_deploys(hospitals, tmp_path):
    """The hospitals example's habit: data.client_files is a pattern. A server where it matches no file
    cannot count the sites and says to give --min-clients; with it, the sites name themselves and the run
    ends; a server where the pattern matches counts the files and says which."""
    pattern = [str(Path("/nonexistent") / "*.csv")]
    sets = ["data.dataset=csv", "data.partition=files", f"data.client_files={pattern}", "data.csv_target=diagnosis",
            "data.categorical=['sex','chest_pain','smoker']", "data.missing_values=['?']", "data.impute=mean",
            "data.missing_by_column={cholesterol=['0']}", "model.name=logistic_regression", "rounds=2"]
    refused = subprocess.run(cohort("server", "--address", "127.0.0.1:0", "--out", str(tmp_path), "--no-progress",
                                    "--wait-s", "5", *[a for s in sets for a in ("--set", s)]),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "match no file on this machine" in refused.stderr and "--min-clients N" in refused.stderr, refused.stderr
    with Federation(tmp_path, [*sets, "name=globbed"], ["--min-clients", str(len(hospitals))]) as fed:
        out = sites_run(fed, hospitals, sets)
    assert f"the sites: {len(hospitals)} sites (--min-clients)" in out and "so the sites name themselves" in out
    assert "agreed with 3 sites: " + ", ".join(f"{f.stem} (client {c})" for c, f in enumerate(hospitals)) in out
    _, folder = model_of(tmp_path, "globbed")
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
    from cohort.client.site import site_count
    from cohort.config import load_config

    import shutil

    (tmp_path / "mine").mkdir()
    for f in hospitals:
        shutil.copy(f, tmp_path / "mine" / f.name)
    here = load_config(None, [*sets[:2], f"data.client_files=['{tmp_path / 'mine'}/*.csv']", *sets[3:]]).data
    count, how = site_count(here)
    assert count == len(hospitals) and all(f.stem in how for f in hospitals)
    with pytest.raises(Exception, match="--min-clients is 2 but data.client_files matches 3 files here"):
        site_count(here, 2)
