from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("api/products/", views.api_products, name="products"),
    path("api/products/batch", views.api_batch, name="batch"),
    path("api/products/batch/", views.api_batch),
    path("api/batches/<uuid:batch_id>", views.api_batch_status, name="batch-status"),
    path("api/products/<uuid:product_id>", views.api_product, name="product-status"),
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
