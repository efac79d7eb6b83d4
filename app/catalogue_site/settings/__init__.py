"""Settings split as base (shared), production and test; pick one with DJANGO_SETTINGS_MODULE."""
