import pytest

from stages.features import ArrayId, FeatureName, FeatureNameError, valid_feature_names

PAPER_NAMES = {
    "D-L2-R0-B0-Cross-Q": "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_q",
    "U-L1-R1-B0-Cross-Q": "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_q",
    "U-L1-R2-B0-Cross-Q": "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_q",
    "U-L2-R1-B0-Cross-Q": "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_q",
    "U-L1-R1-B0-Out": "up_blocks.1.attentions.1.transformer_blocks.0",
    "U-L2-R2-Res-Out": "up_blocks.2.resnets.2",
    "U-L1-R1-Vit-Out": "up_blocks.1.attentions.1",
    "M-R0-B0-Cross-Q": "mid_block.attentions.0.transformer_blocks.0.attn2.to_q",
    "U-L3-R0-B0-Self-Q": "up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_q",
}


@pytest.mark.parametrize("text,path", sorted(PAPER_NAMES.items()))
def test_names_round_trip_and_map_to_the_design_modules(text, path):
    name = FeatureName.parse(text)
    assert str(name) == text
    assert name.module_path == path


@pytest.mark.parametrize("bad", ["U-L1-R1-Cross-Q", "X-L1-R1-B0-Cross-Q", "M-L1-R0-B0-Cross-Q",
                                 "U-L1-R1-B0-Res-Out", "U-L1-R1-B0-Cross-K", "", "U-L1-R1-B0-Cross-Q "
                                 "extra"])
def test_malformed_names_are_refused_with_the_grammar(bad):
    with pytest.raises(FeatureNameError, match="feature name|need|takes no"):
        FeatureName.parse(bad)


def test_out_of_range_name_lists_valid_names(tiny_sd):
    with pytest.raises(FeatureNameError) as info:
        FeatureName.parse("U-L1-R7-B0-Cross-Q").resolve(tiny_sd.unet)
    assert "U-L1-R1-B0-Cross-Q" in str(info.value) and "valid names" in str(info.value)
    with pytest.raises(FeatureNameError):
        FeatureName.parse("U-L0-R0-B0-Cross-Q").resolve(tiny_sd.unet)  # UpBlock2D has no attentions


def test_valid_names_cover_the_sd21_layout(tiny_sd):
    names = valid_feature_names(tiny_sd.unet)
    for text in PAPER_NAMES:
        assert text in names
    assert all(FeatureName.parse(n).resolve(tiny_sd.unet) is not None for n in names)


def test_array_ids_carry_timestep_and_prompt_source():
    array_id = ArrayId.parse("U-L1-R1-B0-Cross-Q@t50:caption")
    assert (str(array_id.feature), array_id.timestep, array_id.source) == ("U-L1-R1-B0-Cross-Q", 50, "caption")
    assert str(ArrayId(FeatureName.parse("U-L2-R2-Res-Out"), 100)) == "U-L2-R2-Res-Out@t100"
    with pytest.raises(FeatureNameError):
        ArrayId.parse("U-L1-R1-B0-Cross-Q")
