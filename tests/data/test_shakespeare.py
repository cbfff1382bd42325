"""Shakespeare by speaking role, from the shared file: speeches parsed, one client per speaker, windows
of its own text, a temporal held-out share, and a checksum that refuses any other file."""

import shutil

import numpy as np
import pytest

from cohort.core.errors import DataError
from cohort.data.shakespeare import load_speakers, speeches, text_path
from cohort.models.zoo import shakespeare_lstm


def test_speeches_and_speakers(data_dir):
    found = speeches(text_path(data_dir, download=False).read_text())
    assert found[0] == ("First Citizen", "Before we proceed any further, hear me speak.")
    assert found[1] == ("All", "Speak, speak.")
    speakers = {s for s, _ in found}
    assert len(found) == 7097 and len(speakers) == 299  # speeches with text (125 name lines have none)


def test_one_client_per_speaker_with_its_own_text_and_a_temporal_holdout(data_dir):
    s = load_speakers(data_dir, download=False, stride=80, min_speeches=10, holdout=0.2)
    assert len(s.names) == 145 and s.names == sorted(s.names) and "First Citizen" in s.names
    assert s.data.x.shape[1] == 80 and s.data.x.dtype == np.uint8 and s.data.num_classes == len(s.vocabulary)
    text = {name: "\n".join(sp for who, sp in speeches(text_path(data_dir).read_text()) if who == name) for name in s.names}
    for c in (0, s.names.index("First Citizen"), len(s.names) - 1):
        train, held = s.partition[c], s.holdout[c]
        assert len(held) >= 1 and train.max() < held.min()  # the held-out windows come after the training ones
        for i in (*train[:2], *held[-1:]):
            window = "".join(s.vocabulary[k] for k in s.data.x[i]) + s.vocabulary[s.data.y[i]]
            assert window in text[s.names[c]]
        share = len(held) / (len(held) + len(train))
        assert abs(share - 0.2) <= 0.5 / (len(held) + len(train)) + 1e-9 or len(train) + len(held) < 5


def test_the_file_is_checked_and_a_missing_one_explained(data_dir, tmp_path):
    (tmp_path / "shakespeare").mkdir()
    shutil.copy(text_path(data_dir), tmp_path / "shakespeare" / "input.txt")
    with open(tmp_path / "shakespeare" / "input.txt", "a") as f:
        f.write("\nEXTRA:\nA line no folio has.\n")
    with pytest.raises(DataError, match="not the expected 6fb458f1232090904fb40fe944165e91"):
        load_speakers(tmp_path, download=False)
    with pytest.raises(DataError, match="not found \\(download is off\\)"):
        load_speakers(tmp_path / "empty", download=False)


def test_the_lstm_is_mcmahans():
    model = shakespeare_lstm((80,), 65)
    lstm = 4 * 256 * (8 + 256 + 2) + 4 * 256 * (256 + 256 + 2)  # two layers, both biases
    assert sum(p.numel() for p in model.parameters()) == 65 * 8 + lstm + 256 * 65 + 65
    import torch

    out = model(torch.randint(0, 65, (3, 80)).float())
    assert out.shape == (3, 65)
