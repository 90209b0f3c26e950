"""Target patterns: what each one matched, and a warning when a wildcard matches modules of different kinds."""

import warnings

import pytest
from transformers import BertConfig, BertModel

from hpeft import peft
from hpeft.inspection import target_report


def tiny_bert():
    return BertModel(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                                vocab_size=50, max_position_embeddings=16))


def test_a_glob_crossing_dots_warns_naming_the_mixed_modules():
    with pytest.warns(UserWarning, match=r"'encoder\.layer\.\*\.output\.dense' matches modules of different kinds or widths") as caught:
        model = peft.apply(tiny_bert(), [peft.LoRA(rank=2, targets=["encoder.layer.*.output.dense"])])
    message = str(caught[0].message)
    assert "Linear(40->16)" in message and "Linear(16->16)" in message
    assert "encoder.layer.0.attention.output.dense" in message and "encoder.layer.0.output.dense" in message
    (row,) = target_report(model)
    assert row["pattern"] == "encoder.layer.*.output.dense" and len(row["modules"]) == 4
    assert row["kinds"] == ["Linear(16->16)", "Linear(40->16)"] and row["warning"]


@pytest.mark.parametrize("targets", [[r"re:encoder\.layer\.\d+\.output\.dense"], ["query", "value"], ["*"]])
def test_patterns_that_mean_one_kind_do_not_warn(targets):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = peft.BitFit(targets=targets) if targets == ["*"] else peft.LoRA(rank=2, targets=targets)
        model = peft.apply(tiny_bert(), [spec])
    rows = target_report(model)
    assert [r["pattern"] for r in rows] == targets and all(r["warning"] is None for r in rows)
    assert all(r["modules"] for r in rows)
    if targets == ["query", "value"]:
        assert rows[0]["modules"] == ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]
