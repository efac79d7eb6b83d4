"""Input validation shared by the JSON API and the HTML form."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import URLValidator

from .models import DESCRIPTION_MAX_LENGTH, IMAGE_URL_MAX_LENGTH, TITLE_MAX_LENGTH


class StrictURLField(forms.CharField):
    """An http(s) URL taken as given: unlike forms.URLField, no scheme is guessed."""

    default_validators = (URLValidator(schemes=["http", "https"]),)


class ProductForm(forms.Form):
    title = forms.CharField(max_length=TITLE_MAX_LENGTH, strip=True)
    image_url = StrictURLField(max_length=IMAGE_URL_MAX_LENGTH, strip=True)
    description = forms.CharField(
        max_length=DESCRIPTION_MAX_LENGTH, strip=True, required=False, widget=forms.Textarea
    )


def validate_product(data: Any) -> tuple[dict[str, str] | None, dict[str, list[str]]]:
    """Return (clean data, {}) or (None, field errors) for one JSON object."""
    if not isinstance(data, dict):
        return None, {"__all__": ["Expected a JSON object."]}
    errors: dict[str, list[str]] = {}
    for name in ProductForm.base_fields:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = ["Must be a string."]
    unknown = sorted(set(data) - set(ProductForm.base_fields))
    if unknown:
        errors["__all__"] = [f"Unknown field: {name}" for name in unknown]
    form = ProductForm(data={k: v for k, v in data.items() if k in ProductForm.base_fields})
    if not form.is_valid():
        for name, messages in form.errors.items():
            errors.setdefault(name, []).extend(messages)
    if errors:
        return None, errors
    return form.cleaned_data, {}
