"""Parameter similarities: hand-computed scores, keys, the registry, and the contract TAPO's matcher relies on."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrlhf_tapo.algorithms.similarity import (
    SIMILARITIES,
    Similarity,
    get_similarity,
    normalize_text,
    register_similarity,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower, height?", "eiffel tower height"),
        ("  A  cat   and AN apple ", "cat and apple"),
        ("theatre of the absurd", "theatre of absurd"),  # articles are whole words only
        ("e-mail: x@y.com!", "email xycom"),
        ("Café  Zürich", "café zürich"),
        ("", ""),
    ],
)
def test_normalize_text_is_squad_style(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "variant, plain",
    [
        ("Cafe\u0301 Zu\u0308rich", "Caf\u00e9 Z\u00fcrich"),  # decomposed vs composed letters
        ("\uff25\uff49\uff46\uff46\uff45\uff4c\uff0c tower\uff1f", "Eiffel, tower?"),  # full-width letters/punct.
        ("Eif\u200bfel\u200d tower\ufeff", "Eiffel tower"),  # zero-width space, joiner, BOM
        ("\ufb01nal \u2460", "final 1"),  # ligature, circled digit
    ],
)
def test_normalize_text_applies_nfkc_and_drops_invisible_characters(variant, plain):
    assert normalize_text(variant) == normalize_text(plain)
    assert get_similarity("text_exact").score({"query": variant}, {"query": plain}) == 1.0
    assert get_similarity("text_fuzzy").score({"query": variant}, {"query": plain}) == 1.0


@pytest.mark.parametrize("name", ["text_exact", "text_fuzzy", "image", "bbox_iou"])
@pytest.mark.parametrize("params", [None, "Eiffel tower", 7, ["query", "x"]])
def test_key_of_params_that_are_not_a_dict_is_none(name, params):
    assert get_similarity(name).key(params) is None


def test_text_exact_matches_normalised_queries_only():
    sim = get_similarity("text_exact")
    assert sim.score({"query": "The Eiffel Tower height"}, {"query": "eiffel tower, HEIGHT"}) == 1.0
    assert sim.score({"query": "eiffel tower height"}, {"query": "height eiffel tower"}) == 0.0
    assert sim.key({"query": "An Apple"}) == "apple"
    assert sim.key({"image": "img_0"}) is None
    assert sim.key({"query": 3}) is None


def test_text_fuzzy_is_token_set_jaccard():
    sim = get_similarity("text_fuzzy")
    # {eiffel, tower, height} vs {eiffel, tower, height, meters}: 3 shared of 4.
    assert sim.score(
        {"query": "Eiffel tower height"}, {"query": "the eiffel tower height in meters"}
    ) == pytest.approx(3 / 5)
    assert sim.score({"query": "eiffel tower height"}, {"query": "height of eiffel tower"}) == pytest.approx(3 / 4)
    assert sim.score({"query": "paris london"}, {"query": "London, Paris"}) == 1.0
    assert sim.key({"query": "paris london"}) == sim.key({"query": "london paris"})
    assert sim.score({"query": "paris"}, {"query": "rome"}) == 0.0
    assert sim.score({"query": "?!"}, {"query": ""}) == 1.0  # both normalise to nothing
    assert sim.score({"query": "?!"}, {"query": "rome"}) == 0.0


def test_text_fuzzy_blocks_are_jaccard_prefixes():
    sim = get_similarity("text_fuzzy")
    key = sim.key({"query": "of who eiffel tower height"})
    # Jaccard >= 0.8 with a 5-token set needs 4 shared tokens: any such set shares one of the first 2 in the global
    # order (longest first, then alphabetical), so short common words are the last to become blocks.
    assert sim.blocks(key, 0.8) == ["eiffel", "height"]
    assert sim.blocks(key, 1.0) == ["eiffel"]
    assert sim.blocks(key, 0.2) == ["eiffel", "height", "tower", "who", "of"]
    assert sim.blocks(sim.key({"query": "?"}), 0.8) == []


def test_image_similarity_same_image_and_crop_iou():
    sim = get_similarity("image")
    whole = {"image": "img_0"}
    assert sim.score(whole, {"image": "img_0"}) == 1.0
    assert sim.score(whole, {"image": "img_0", "bbox": [0, 0, 1000, 1000]}) == 1.0  # no bbox == whole image
    assert sim.score(whole, {"image": "img_1"}) == 0.0
    # Quarter of the image vs the whole image: IoU = 250000 / 1000000.
    assert sim.score(whole, {"image": "img_0", "bbox": [0, 0, 500, 500]}) == pytest.approx(0.25)
    # [0,0,500,500] vs [250,0,750,500]: intersection 250*500, union 2*250000 - 125000.
    a, b = {"image": "img_2", "bbox": [0, 0, 500, 500]}, {"image": "img_2", "bbox": [250, 0, 750, 500]}
    assert sim.score(a, b) == pytest.approx(125000 / 375000)
    assert sim.score(a, {"image": "img_3", "bbox": [0, 0, 500, 500]}) == 0.0
    assert sim.key({"image": "img_0", "bbox": [0, 0, 1]}) is None
    assert sim.key({"bbox": [0, 0, 1, 1]}) is None


def test_bbox_iou_requires_a_box():
    sim = get_similarity("bbox_iou")
    assert sim.key({"image": "img_0"}) is None
    disjoint = sim.score(
        {"image": "img_0", "bbox": [0, 0, 100, 100]}, {"image": "img_0", "bbox": [200, 200, 300, 300]}
    )
    assert disjoint == 0.0
    nested = sim.score({"image": "img_0", "bbox": [0, 0, 100, 100]}, {"image": "img_0", "bbox": [0, 0, 100, 50]})
    assert nested == pytest.approx(0.5)


def test_exact_json_is_canonical():
    sim = get_similarity("exact_json")
    assert sim.score({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}) == 1.0
    assert sim.score({"a": 1}, {"a": 2}) == 0.0
    assert sim.key({"a": object()}) is None
    assert sim.key({"a": float("nan")}) is None


def test_registry_names_and_errors():
    assert {"text_exact", "text_fuzzy", "image", "bbox_iou", "exact_json"} <= set(SIMILARITIES)
    with pytest.raises(ValueError, match="unknown similarity 'nope'.*text_fuzzy"):
        get_similarity("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_similarity("image", Similarity())


_words = ["the", "a", "?", "eiffel", "Tower", "height", "paris", "louvre", "museum", "built", "year", "who"]
_queries = st.lists(st.sampled_from(_words), max_size=8).map(" ".join)
_boxes = st.tuples(st.integers(0, 900), st.integers(0, 900), st.integers(1, 100), st.integers(1, 100)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
)
_image_params = st.fixed_dictionaries({"image": st.sampled_from(["img_0", "img_1"])}, optional={"bbox": _boxes})
_cases = st.one_of(
    st.tuples(st.sampled_from(["text_exact", "text_fuzzy"]), st.fixed_dictionaries({"query": _queries})),
    st.tuples(st.just("image"), _image_params),
    st.tuples(st.just("bbox_iou"), st.fixed_dictionaries({"image": st.sampled_from(["img_0"]), "bbox": _boxes})),
)


@settings(max_examples=100, deadline=None)
@given(_cases, st.data(), st.sampled_from([0.2, 0.5, 2 / 3, 0.75, 0.8, 1.0]))
def test_similarity_contract(case, data, theta):
    name, a = case
    b = data.draw(_cases.filter(lambda c: c[0] == name))[1] if data.draw(st.booleans()) else a
    sim = get_similarity(name)
    ka, kb = sim.key(a), sim.key(b)
    score = sim.score(a, b)
    assert 0.0 <= score <= 1.0
    assert score == sim.score(b, a)
    assert (score == 1.0) == (ka == kb)  # the exact group is the only perfect match
    if score >= theta and ka != kb:  # fuzzy candidates are reachable through blocks
        assert set(sim.blocks(ka, theta)) & set(sim.blocks(kb, theta))
