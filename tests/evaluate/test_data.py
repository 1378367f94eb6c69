"""The measurement protocol's token streams: corpus order, no BOS, windows, disjoint calibration."""
from __future__ import annotations

import pytest

from sizewise.errors import SizewiseError
from sizewise.evaluate import data


def test_corpus_is_pydoc_topics_in_sorted_key_order():
    from pydoc_data.topics import topics

    text = data.corpus_text()
    keys = sorted(topics)
    assert text.startswith(topics[keys[0]])
    assert text.endswith(topics[keys[-1]])
    # blank-line joined: the second topic follows the first after exactly one "\n\n"
    assert text[len(topics[keys[0]]):].startswith("\n\n" + topics[keys[1]])


def test_text_files_replace_the_corpus(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha")
    b.write_text("beta")
    assert data.corpus_text([a, b]) == "alpha\n\nbeta"
    with pytest.raises(SizewiseError, match="not found"):
        data.corpus_text([tmp_path / "missing.txt"])


def test_eval_tokens_have_no_bos_and_follow_the_text(bundled_model):
    tok = bundled_model.tokenizer
    ids = data.eval_tokens(tok, 8192)
    assert len(ids) == 8192
    assert tok.bos_token_id is not None and ids[0] != tok.bos_token_id
    head = data.corpus_text()[:200]
    expect = tok(head, add_special_tokens=False)["input_ids"]
    assert ids[:10] == expect[:10]


def test_window_count_and_predicted_tokens_for_8192_by_512(bundled_model):
    ids = data.eval_tokens(bundled_model.tokenizer, 8192)
    ws = data.windows(ids, 512)
    assert len(ws) == 16
    assert sum(len(w) - 1 for w in ws) == 8176
    # non-overlapping and in order: concatenated they are the stream
    assert [t for w in ws for t in w] == ids


def test_windows_drop_a_trailing_single_token():
    ws = data.windows(list(range(1025)), 512)
    assert [len(w) for w in ws] == [512, 512]


def test_calibration_is_disjoint_from_eval_and_shaped(bundled_model):
    tok = bundled_model.tokenizer
    cal = data.calib_tokens(tok, 4, 128)
    assert tuple(cal.shape) == (4, 128)
    allt = data.corpus_tokens(tok)
    assert cal[0].tolist() == allt[data.EVAL_RESERVED:data.EVAL_RESERVED + 128]
    assert data.EVAL_RESERVED >= 8192  # the default eval stream ends before calibration starts


def test_too_short_text_is_a_user_error(bundled_model, tmp_path):
    short = data.corpus_text([_write(tmp_path / "s.txt", "just a few words")])
    with pytest.raises(SizewiseError, match="calibration needs"):
        data.calib_tokens(bundled_model.tokenizer, 2, 64, text=short)
    with pytest.raises(SizewiseError, match="only"):
        data.eval_tokens(bundled_model.tokenizer, 8192, text=short)


def _write(p, s):
    p.write_text(s)
    return p
