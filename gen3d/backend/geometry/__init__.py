"""Cameras and conventions, mesh extraction, UV unwrap, texture bake, file formats."""
