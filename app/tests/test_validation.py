import pytest

from catalogue.validation import validate_product

GOOD = {"title": "Python Cookbook", "image_url": "https://example.org/cover.png"}


def test_good_input_is_accepted_and_title_trimmed():
    clean, errors = validate_product({**GOOD, "title": "  Python Cookbook  "})
    assert errors == {}
    assert clean["title"] == "Python Cookbook"
    assert clean["description"] == ""


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"image_url": GOOD["image_url"]}, "title"),
        ({**GOOD, "title": "   "}, "title"),
        ({**GOOD, "title": "x" * 201}, "title"),
        ({**GOOD, "title": 42}, "title"),
        ({"title": "t"}, "image_url"),
        ({**GOOD, "image_url": "ftp://example.org/a.png"}, "image_url"),
        ({**GOOD, "image_url": "example.org/a.png"}, "image_url"),
        ({**GOOD, "image_url": "javascript:alert(1)"}, "image_url"),
        ({**GOOD, "image_url": "https://example.org/" + "a" * 2030}, "image_url"),
        ({**GOOD, "colour": "red"}, "__all__"),
    ],
)
def test_bad_input_names_the_field(data, field):
    clean, errors = validate_product(data)
    assert clean is None
    assert field in errors


def test_limits_are_inclusive():
    url = "https://example.org/" + "a" * (2048 - len("https://example.org/"))
    clean, errors = validate_product({"title": "x" * 200, "image_url": url})
    assert errors == {}
    assert len(clean["image_url"]) == 2048


def test_non_object_is_rejected():
    assert validate_product(["title"]) == (None, {"__all__": ["Expected a JSON object."]})
