"""A task's config holds the loop's record at its top and each component's record as a named table
(cohort.core.records): a per-client addition merges into its record, a protocol hands the task it wraps
the config without its own record, and no component writes loose prefixed keys any more."""

import re
from pathlib import Path

import pytest

import cohort
from cohort.channel.base import client_message
from cohort.core.errors import ConfigError
from cohort.core.records import APP, COMPRESSION, SECAGG, SITE, merged, record, without
from cohort.core.types import Instruction, Message

SRC = Path(cohort.__file__).parent


def test_a_per_client_addition_merges_into_the_rounds_record():
    round_ = {"round": 3, "seed": 1, SECAGG: {"clip_range": 4.0, "bits": 20}, SITE: {"columns": ["a"]}}
    mine = client_message(Message("secagg:fit", {}, round_), Instruction(7, {SECAGG: {"id": 7, "inbox": {}}}))
    assert mine.config == {"round": 3, "seed": 1, SECAGG: {"clip_range": 4.0, "bits": 20, "id": 7, "inbox": {}},
                           SITE: {"columns": ["a"]}}
    assert round_[SECAGG] == {"clip_range": 4.0, "bits": 20}  # the round's record is not changed for the others
    assert merged({"round": 1}, None, {"round": 2}) == {"round": 2}  # plain keys: the later wins


def test_a_record_is_read_as_a_table_or_refused():
    assert record({SITE: {"clients": 2}}, SITE) == {"clients": 2}
    assert record({}, SITE) == {} and record(None, APP) == {}
    with pytest.raises(ConfigError, match="the task's 'compression' record is a str; expected a table"):
        record({COMPRESSION: "int8"}, COMPRESSION)
    assert without({"round": 1, SECAGG: {"id": 1}}, SECAGG) == {"round": 1}


def test_no_component_writes_loose_prefixed_keys_into_a_tasks_config():
    """The old flat names (secagg_id, site_columns, site_data, ...) are gone from the code that builds and
    reads task configs; the round record's figures (secagg_mode, ...) are metrics, not config."""
    loose = re.compile(r"""["'](secagg_(id|neighbours|inbox|survivors|dropped|bits|l2_clip)|"""
                       r"""site_(columns|labels|low|high|clients|categories|mean))["']""")
    found = [f"{p.relative_to(SRC)}: {line.strip()}" for p in SRC.rglob("*.py")
             for line in p.read_text().splitlines() if loose.search(line)]
    assert not found, found
