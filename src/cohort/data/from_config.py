"""The data a config asks for: loaded, split into the server's test set and the clients' shares, and
their held-out parts (``[data]``). ``cfg`` is the config's ``DataConfig``, read by its fields as
:mod:`cohort.data.sites` reads it: the datasets import nothing of the config module."""

from __future__ import annotations

from dataclasses import dataclass

from cohort import data as datasets
from cohort.core.errors import ConfigError
from cohort.data import ArrayDataset, Partition


@dataclass(frozen=True, eq=False)
class FederatedData:
    train: ArrayDataset  # the clients' examples (partitions index into it)
    test: ArrayDataset | None  # the server's test set (none with natural partitions: each site keeps its own)
    partition: Partition  # client -> training examples
    holdout: Partition | None  # client -> held-out examples
    names: list[str] | None  # the clients' own names (natural partitions), else None


def federated_data(cfg, seed: int) -> FederatedData:
    """The run's data as ``cfg`` (a DataConfig) asks for it, split with ``seed``."""
    if cfg.dataset == "synthetic":
        from cohort.data.synthetic import LazyPartition, SyntheticFederation

        fed = SyntheticFederation(cfg.num_clients, cfg.synthetic_alpha, cfg.synthetic_beta, seed, cfg.holdout)
        x, y = fed.examples(0)  # one client's examples: the shapes and classes every client shares
        example = ArrayDataset(x, y, "classification", 10, name="synthetic")
        return FederatedData(example, None, LazyPartition(fed), LazyPartition(fed, held_out=True) if cfg.holdout > 0 else None, None)
    if cfg.dataset == "shakespeare":
        from cohort.data.shakespeare import load_speakers

        s = load_speakers(cfg.dir or None, download=cfg.download, stride=cfg.seq_stride, min_speeches=cfg.min_speeches,
                          holdout=cfg.holdout)
        return FederatedData(s.data, None, s.partition, s.holdout, s.names)
    if cfg.dataset == "csv":
        from cohort.data.sites import check_csv, load_sites

        check_csv(cfg)
        sites = load_sites(cfg, seed, split=partition_only)
        return FederatedData(sites.train, sites.test, sites.partition, sites.holdout, sites.names if cfg.natural else None)
    train, test = load_data(cfg, seed)
    partition = partition_only(train, cfg, seed)
    if cfg.holdout == 0:
        return FederatedData(train, test, partition, None, None)
    partition, holdout = datasets.split_holdout(partition, cfg.holdout, seed)
    return FederatedData(train, test, partition, holdout, None)


def load_data(cfg, seed: int) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The (train, test) split of ``cfg``'s built-in dataset (mnist, breast_cancer, diabetes)."""
    if cfg.dataset == "mnist":
        return datasets.load_mnist(cfg.dir or None, download=cfg.download)
    loaders = {"breast_cancer": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}
    train, test = datasets.train_test_split(loaders[cfg.dataset](), cfg.test_fraction, seed)
    return datasets.standardize(train, test) if cfg.standardize else (train, test)


def partition_only(train: ArrayDataset, cfg, seed: int) -> Partition:
    """The synthetic partition ``cfg.partition`` of ``train``'s examples."""
    n = len(train)
    if cfg.num_clients > n:
        raise ConfigError(f"data.num_clients is {cfg.num_clients} but the training data has only {n} examples "
                          f"(after the server's test split, data.test_fraction = {cfg.test_fraction}); "
                          f"use at most {n} clients")
    if cfg.partition in ("shards", "dirichlet") and train.task != "classification":
        raise ConfigError(f"data.partition = {cfg.partition!r} splits by class label; {train.name or 'this dataset'} "
                          "is a regression dataset: use 'iid' or 'quantity'")
    if cfg.partition == "iid":
        partition = datasets.iid(n, cfg.num_clients, seed)
    elif cfg.partition == "shards":
        partition = datasets.shards(train.y, cfg.num_clients, seed, shards_per_client=cfg.shards_per_client)
    elif cfg.partition == "dirichlet":
        partition = datasets.dirichlet(train.y, cfg.num_clients, seed, alpha=cfg.alpha)
    else:
        partition = datasets.quantity_skew(n, cfg.num_clients, seed, alpha=cfg.alpha)
    return partition
