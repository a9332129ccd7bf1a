"""recommender_panel: search, rate, and recommendations that follow the ratings.

The panel is driven as the browser test drives it, by setting the search box's value and
clicking the buttons, on a planted model whose recommendations can be worked out by hand.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import data, widgets

# Two tastes on two axes: children's films along (1, 0), horror along (0, 1), Heat on neither.
MOVIES = pd.DataFrame(
    {
        "item_id": [10, 20, 30, 40, 50, 60, 70],
        "title": [
            "Toy Story (1995)",
            "Toy Story 2 (1999)",
            "Finding Nemo (2003)",
            "Shining, The (1980)",
            "Alien (1979)",
            "Exorcist, The (1973)",
            "Heat (1995)",
        ],
        "genres": ["Children", "Children", "Children", "Horror", "Horror", "Horror", "Crime"],
    }
)
ITEM_FACTORS = np.array(
    [[1, 0], [1, 0], [0.8, 0], [0, 1], [0, 1], [0, 0.8], [0, 0]], dtype=np.float32
)
CLASSES = (
    "mf-search",
    "mf-search-results",
    "mf-search-status",
    "mf-rating",
    "mf-rate-button",
    "mf-clear-button",
    "mf-rated",
    "mf-recommendations",
    "mf-messages",
)


def _model(item_factors=ITEM_FACTORS, global_bias: float = 3.0) -> SimpleNamespace:
    """The model protocol without biases: r̂ = μ + uᵀv_i, and fold-in with λ = 1.

    A new user who rates item j with r gets u = v_j (r − μ) / (‖v_j‖² + λ); for Toy Story
    rated 5 that is u = (1, 0), so Toy Story 2 scores 4.0, Finding Nemo 3.8 and the rest 3.0.
    """
    n_items, rank = item_factors.shape
    return SimpleNamespace(
        user_factors=np.zeros((1, rank), np.float32),
        item_factors=item_factors,
        user_bias=np.zeros(1, np.float32),
        item_bias=np.zeros(n_items, np.float32),
        global_bias=global_bias,
        use_bias=False,
        reg=1.0,
        weighting="uniform",
        n_users=1,
        n_items=n_items,
        rank=rank,
    )


def _panel(**options):
    item_map = data.IdMap.fit(MOVIES["item_id"])
    panel = widgets.recommender_panel(_model(), MOVIES, item_map, **options)
    parts = {name[3:].replace("-", "_"): _part(panel, name) for name in CLASSES}
    return SimpleNamespace(root=panel, **parts)


def _parts(widget, css_class: str) -> list:
    found = [widget] if css_class in widget._dom_classes else []
    for child in getattr(widget, "children", ()):
        found += _parts(child, css_class)
    return found


def _part(widget, css_class: str):
    found = _parts(widget, css_class)
    assert len(found) == 1, f"{len(found)} widgets carry {css_class}"
    return found[0]


def _search(panel, text: str) -> list[str]:
    """Type ``text`` one letter at a time, as a reader does; return the titles offered."""
    for end in range(1, len(text) + 1):
        panel.search.value = text[:end]
    return [label for label, _ in panel.search_results.options]


def _rows(html: str) -> list[tuple[str, ...]]:
    """The cells of each body row of an HTML table."""
    body = html.split("<tbody>", 1)[1] if "<tbody>" in html else ""
    return [
        tuple(re.findall(r"<td>(.*?)</td>", row, flags=re.S))
        for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
    ]


def _recommended(panel) -> list[str]:
    return [row[1] for row in _rows(panel.recommendations.value)]


def test_every_part_carries_exactly_one_css_class():
    panel = _panel()
    for name in CLASSES:
        _part(panel.root, name)
    assert panel.rating.value == 5.0


def test_search_offers_titles_holding_every_word_most_rated_first():
    # Toy Story 2 has more training ratings than Toy Story, so it comes first.
    item_map = data.IdMap.fit(MOVIES["item_id"])
    train = data.Ratings(
        users=np.array([0, 1, 2, 0], np.int32),
        items=np.array([1, 1, 1, 0], np.int32),
        values=np.full(4, 4.0, np.float32),
        n_users=3,
        n_items=7,
    )
    panel = _panel(train=train)
    assert _search(panel, "Toy Story") == [
        "Toy Story 2 (1999) · 3 ratings",
        "Toy Story (1995) · 1 ratings",
    ]
    assert panel.search_results.value == item_map.to_index([20])[0]

    assert _search(panel, "the SHINING") == ["Shining, The (1980) · 0 ratings"]
    assert _search(panel, "story of nemo") == []
    assert panel.search_results.value is None
    assert panel.search_status.value == "0 titles match."
    panel.search.value = "   "
    assert panel.search_results.options == ()


def test_search_without_training_counts_offers_titles_in_title_order():
    panel = _panel(max_results=1)
    assert _search(panel, "toy story") == ["Toy Story (1995)"]
    assert panel.search_status.value == "2 titles match; showing 1."


def test_rating_the_top_result_with_five_stars_recommends_its_kind():
    panel = _panel(k=3)
    assert "Rate a movie" in panel.recommendations.value
    before = panel.recommendations.value

    _search(panel, "toy story")
    panel.rate_button.click()

    assert _rows(panel.rated.value) == [("Toy Story (1995)", "5.0")]
    assert panel.recommendations.value != before
    rows = _rows(panel.recommendations.value)
    assert [(row[1], float(row[3])) for row in rows] == [
        ("Toy Story 2 (1999)", 4.0),
        ("Finding Nemo (2003)", 3.8),
        ("Shining, The (1980)", 3.0),  # ties at 3.0 go to the lowest index
    ]


def test_a_low_rating_sends_its_kind_to_the_bottom():
    # Toy Story rated 1: u = (−1, 0), so Finding Nemo scores 2.2 and Toy Story 2 scores 2.0.
    panel = _panel(k=6)
    _search(panel, "toy story")
    panel.rating.value = 1.0
    panel.rate_button.click()
    assert _recommended(panel)[-2:] == ["Finding Nemo (2003)", "Toy Story 2 (1999)"]

    _search(panel, "alien")
    panel.rating.value = 5.0
    panel.rate_button.click()
    # Now u = (−1, 1): the horror films lead, Alien itself is left out.
    assert _recommended(panel)[:2] == ["Shining, The (1980)", "Exorcist, The (1973)"]


def test_rated_movies_never_appear_in_the_recommendations():
    panel = _panel(k=6)
    rated = set()
    for query, stars in [("toy story 2", 5.0), ("nemo", 4.0), ("shining", 0.5), ("heat", 3.0)]:
        _search(panel, query)
        panel.rating.value = stars
        panel.rate_button.click()
        rated.add(panel.search_results.options[0][0])
        shown = _recommended(panel)
        assert not rated & set(shown)
        assert len(shown) == min(6, len(MOVIES) - len(rated))  # every other movie is listed

    # Rating a movie again replaces its rating.
    _search(panel, "heat")
    panel.rating.value = 4.5
    panel.rate_button.click()
    assert ("Heat (1995)", "4.5") in _rows(panel.rated.value)
    assert len(_rows(panel.rated.value)) == 4


def test_rate_without_a_search_result_asks_for_one():
    panel = _panel()
    _search(panel, "no such film")
    before = panel.recommendations.value
    panel.rate_button.click()
    assert panel.recommendations.value == before
    assert panel.search_status.value == "Search for a movie first, then rate it."


def test_start_over_forgets_the_ratings():
    panel = _panel()
    _search(panel, "alien")
    panel.rate_button.click()
    assert _recommended(panel)
    panel.clear_button.click()
    assert "none yet" in panel.rated.value
    assert "Rate a movie" in panel.recommendations.value


def test_folding_in_one_user_takes_well_under_a_second():
    rng = np.random.default_rng(0)
    n_items = 9_724  # MovieLens' catalogue, rank 32
    model = _model(rng.normal(0, 0.3, (n_items, 32)).astype(np.float32))
    movies = pd.DataFrame(
        {"item_id": np.arange(n_items), "title": [f"Film {i}" for i in range(n_items)]}
    )
    panel = widgets.recommender_panel(model, movies, data.IdMap.fit(movies["item_id"]))
    search, rate = _part(panel, "mf-search"), _part(panel, "mf-rate-button")
    search.value = "film 12"
    rate.click()  # the first fold-in may build TensorFlow's kernels
    search.value = "film 34"
    start = time.perf_counter()
    rate.click()
    assert time.perf_counter() - start < 0.5


def test_bad_arguments_are_named():
    model, item_map = _model(), data.IdMap.fit(MOVIES["item_id"])
    with pytest.raises(TypeError, match="^model: "):
        widgets.recommender_panel(object(), MOVIES, item_map)
    with pytest.raises(ValueError, match="^movies: expected a DataFrame"):
        widgets.recommender_panel(model, MOVIES.drop(columns="title"), item_map)
    with pytest.raises(ValueError, match=r"^movies: has no title for item_id\(s\) \[70\]"):
        widgets.recommender_panel(model, MOVIES.iloc[:6], item_map)
    with pytest.raises(ValueError, match="^item_map: maps 6 items, the model has 7"):
        widgets.recommender_panel(model, MOVIES, data.IdMap.fit(MOVIES["item_id"][:6]))
    with pytest.raises(TypeError, match="^item_map: "):
        widgets.recommender_panel(model, MOVIES, MOVIES["item_id"])
    for options, name in [
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"max_results": True}, "max_results"),
        ({"reg": 0.0}, "reg"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            widgets.recommender_panel(model, MOVIES, item_map, **options)
    with pytest.raises(TypeError, match="^train: expected data.Ratings or None"):
        widgets.recommender_panel(model, MOVIES, item_map, train="ratings")
    other = data.Ratings(
        np.zeros(1, np.int32), np.zeros(1, np.int32), np.ones(1, np.float32), 1, 6
    )
    with pytest.raises(ValueError, match="^train: has 6 items, the model 7"):
        widgets.recommender_panel(model, MOVIES, item_map, train=other)
