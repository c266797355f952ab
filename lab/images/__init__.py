"""Offline lab images: baked once from Debian packages, cached by the content of their recipe."""

from lab.images.builder import build_images, current_images
from lab.images.recipe import ROLES, Recipe, recipes
from lab.images.store import Image, ImageStore, default_cache_dir

__all__ = ["ROLES", "Image", "ImageStore", "Recipe", "build_images", "current_images",
           "default_cache_dir", "recipes"]
