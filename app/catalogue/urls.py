from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    # Sign-in for the page's form; accounts are made by the operator (manage.py catalogue_user).
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/products/", views.api_products, name="products"),
    path("api/products/batch", views.api_batch, name="batch"),
    path("api/products/batch/", views.api_batch),
    path("api/batches/<uuid:batch_id>", views.api_batch_status, name="batch-status"),
    path("api/products/<uuid:product_id>", views.api_product, name="product-status"),
    path("api/products/<uuid:product_id>/views", views.api_product_view, name="product-view"),
    path(
        "api/products/<uuid:product_id>/history",
        views.api_product_history,
        name="product-history",
    ),
    path("api/autocomplete", views.api_autocomplete, name="autocomplete"),
    path("api/search", views.api_search, name="search"),
    path("api/stats", views.api_stats, name="stats"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
